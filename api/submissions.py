"""What a client submits, turned into the JobSpecs that are sent: the envelope, each
workload's params, and what only configuration knows (allowed hosts, time limits,
backoff). A 422 names every failing field; nothing half-valid is ever accepted."""

from __future__ import annotations

import json
from typing import Any

from flask import request
from pydantic import ValidationError

from api.context import api_context
from api.errors import FieldError, Problem
from api.models import MAX_BATCH_JOBS, BatchItems, JobSubmission
from services.catalog.pools import POOLS, pool_cannot_run
from services.catalog.workloads import CATALOG, Workload, WorkloadError, get_workload
from services.jobs.submission import JobSpec

# Errors listed in one 422, so a file with a systematic mistake gives a readable answer.
MAX_ERRORS = 20


def json_body() -> Any:
    """The request body parsed as JSON, or a 400 saying why it is not."""
    raw = request.get_data(cache=True)  # 413 from Flask if over JOB_MAX_BODY_BYTES
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "Malformed JSON", f"the body is not valid JSON: {exc}") from None


def parse_submission(body: Any) -> JobSpec:
    """Validate the envelope, the workload's params and what the pool must be able to
    do; a 422 names the failing field."""
    if not isinstance(body, dict):
        raise Problem(422, "Validation failed", "the body must be a JSON object")
    try:
        submission = JobSubmission.model_validate(body).root
    except ValidationError as exc:
        raise submission_problem(exc) from None
    return checked_spec(submission)


def checked_spec(submission: Any) -> JobSpec:
    """A submission that passed its schema, checked against what only configuration
    knows (allowed hosts, time limits), as the JobSpec that is sent."""
    workload = get_workload(submission.workload)
    try:
        workload.check_policy(submission.params)
    except WorkloadError as exc:
        raise field_problem(f"params.{exc.field}" if exc.field else "params", str(exc)) from None
    # What the job leaves out, its workload's @workload(...) defaults say.
    given = submission.model_fields_set
    time_limit = submission.time_limit if "time_limit" in given else workload.time_limit
    max_retries = submission.max_retries if "max_retries" in given else workload.max_retries
    if submission.pool is not None:
        check_pool_runs(workload, submission.pool)
    if time_limit is not None:
        by_default = "time_limit" not in given
        check_time_limit(time_limit, submission.pool, workload.name if by_default else None)
    if max_retries > 0:
        check_backoff(submission.backoff, max_retries)
    return JobSpec(
        workload=submission.workload,
        params=submission.params.model_dump(mode="json"),
        pool=submission.pool,
        max_retries=max_retries,
        backoff=submission.backoff,
        time_limit=time_limit,
    )


def check_pool_runs(workload: Workload, pool: str) -> None:
    """A pool that cannot run the workload as it is written is a 422 saying which can."""
    why = pool_cannot_run(workload, pool)
    if why is not None:
        able = ", ".join(p for p in POOLS if pool_cannot_run(workload, p) is None)
        raise field_problem("pool", f"{why}; pools that can: {able}")


def submission_problem(exc: ValidationError) -> Problem:
    """A 422 for a JobSubmission: errors inside the union are located under the workload's
    name (pydantic's tag); the client wants the field's own path."""
    errors = []
    for item in exc.errors(include_url=False):
        message = item["msg"]
        if item["type"] == "union_tag_not_found":  # no `workload` at all
            message = "required: one of " + ", ".join(repr(name) for name in CATALOG)
        if item["type"].startswith("union_tag") or item["loc"] == ():
            path = "workload" if item["type"].startswith("union_tag") else "body"
        else:
            path = ".".join(str(part) for part in item["loc"][1:])
        errors.append(FieldError(field=path, message=message))
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return Problem(422, "Validation failed", detail, errors)


def field_problem(field: str, message: str) -> Problem:
    return Problem(
        422, "Validation failed", f"{field}: {message}", [FieldError(field=field, message=message)]
    )


def check_time_limit(time_limit: int, pool: str | None, default_of: str | None = None) -> None:
    """A time limit the pool can enforce, and short enough. `default_of`: the workload
    whose @workload(time_limit=...) it is (the job named none), said in the 422 since the
    client never wrote it, with how to go without it."""
    settings = api_context().settings
    origin, way_out = "", ""
    if default_of is not None:
        origin = f"{default_of}'s default time_limit of {time_limit} s: "
        way_out = '; or send "time_limit": null to run without one'
    if time_limit > settings.job_max_time_limit:
        raise field_problem(
            "time_limit",
            f"{origin}at most {settings.job_max_time_limit} s (JOB_MAX_TIME_LIMIT, kept below "
            f"JOB_VISIBILITY_TIMEOUT={settings.job_visibility_timeout} s so a job still "
            f"running is never delivered twice){way_out}",
        )
    if pool is not None and not POOLS[pool].hard_time_limit:
        able = ", ".join(p.name for p in POOLS.values() if p.hard_time_limit)
        raise field_problem(
            "time_limit",
            f"{origin}pool {pool!r} cannot enforce a time limit (a thread or greenlet cannot "
            f"be killed); pools that can: {able}{way_out}",
        )


def check_backoff(backoff: float, max_retries: int) -> None:
    """The longest wait before a retry must stay below the visibility timeout: a worker
    holds the retry's message unacknowledged while it waits, and Redis delivers one held
    longer again (the copy runs the job early). Below the record's TTL too, or the retry
    would find no record."""
    settings = api_context().settings
    longest = backoff * 2 ** (max_retries - 1)
    bound = min(settings.job_visibility_timeout, settings.job_result_ttl)
    if longest >= bound:
        raise field_problem(
            "backoff",
            f"the last retry may wait backoff * 2**(max_retries - 1) = {longest:g} s; it "
            f"must stay below {bound} s (JOB_VISIBILITY_TIMEOUT="
            f"{settings.job_visibility_timeout} s, JOB_RESULT_TTL={settings.job_result_ttl} "
            "s): a smaller backoff or fewer retries",
        )


def parse_batch(body: Any) -> list[JobSpec]:
    """Every job validated as the single POST /jobs would; a 422 names each bad item
    (`jobs.3.params.seconds`), and then nothing is accepted."""
    if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
        raise Problem(422, "Validation failed", 'the body must be {"jobs": [...]}')
    items = body["jobs"]
    if not 1 <= len(items) <= MAX_BATCH_JOBS:
        raise Problem(
            422, "Validation failed", f"jobs: between 1 and {MAX_BATCH_JOBS} jobs per request",
            [FieldError(field="jobs", message=f"{len(items)} jobs; at most {MAX_BATCH_JOBS}")],
        )  # fmt: skip
    try:
        # The whole batch in one call into pydantic-core: a thousand model_validate calls
        # cost more than the validation itself (profiled: docs/performance.md).
        submissions = BatchItems.validate_python(items)
    except ValidationError:
        submissions = None  # some item is bad: validate one by one to name each
    specs, errors = [], []
    for index, item in enumerate(items):
        try:
            if submissions is not None:
                specs.append(checked_spec(submissions[index]))
            else:
                specs.append(parse_submission(item))
        except Problem as problem:
            found = problem.errors or [FieldError(field="body", message=problem.detail)]
            errors += [
                FieldError(field=f"jobs.{index}.{e.field}", message=e.message) for e in found
            ]
    if errors:
        shown = errors[:MAX_ERRORS]
        detail = "; ".join(f"{e.field}: {e.message}" for e in shown)
        if len(errors) > MAX_ERRORS:
            detail += f"; and {len(errors) - MAX_ERRORS} more"
        raise Problem(422, "Validation failed", f"nothing was accepted: {detail}", shown)
    return specs
