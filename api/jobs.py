"""/jobs: submit, read, list and cancel jobs."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, g, request, url_for
from pydantic import ValidationError
from spectree import Response as SpecResponse

from api.context import api_context
from api.errors import FieldError, Problem, problem_responses, validation_problem
from api.models import JobListQuery, JobPage, JobSubmission
from api.openapi import spec
from services.idempotency import IdempotencyConflict, submit_once
from services.jobs import JobRecord, JobState
from services.pools import POOLS
from services.submission import BrokerUnavailable, JobSpec, requeue_job, submit_job
from services.workloads import CATALOG, WorkloadError, get_workload

blueprint = Blueprint("jobs", __name__)


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
    try:
        get_workload(submission.workload).check_policy(submission.params)
    except WorkloadError as exc:
        raise field_problem("params.url", str(exc)) from None
    if submission.time_limit is not None:
        check_time_limit(submission.time_limit, submission.pool)
    if submission.max_retries > 0:
        check_backoff(submission.backoff, submission.max_retries)
    return JobSpec(
        workload=submission.workload,
        params=submission.params.model_dump(mode="json"),
        pool=submission.pool,
        max_retries=submission.max_retries,
        backoff=submission.backoff,
        time_limit=submission.time_limit,
    )


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


def check_time_limit(time_limit: int, pool: str | None) -> None:
    settings = api_context().settings
    if time_limit > settings.job_max_time_limit:
        raise field_problem(
            "time_limit",
            f"at most {settings.job_max_time_limit} s (JOB_MAX_TIME_LIMIT, kept below "
            f"JOB_VISIBILITY_TIMEOUT={settings.job_visibility_timeout} s so a job still "
            "running is never delivered twice)",
        )
    if pool is not None and not POOLS[pool].hard_time_limit:
        able = ", ".join(p.name for p in POOLS.values() if p.hard_time_limit)
        raise field_problem(
            "time_limit",
            f"pool {pool!r} cannot enforce a time limit (a thread or greenlet cannot be "
            f"killed); pools that can: {able}",
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


def record_response(record: JobRecord, status: int = 200) -> Response:
    response = Response(record.model_dump_json(), status, mimetype="application/json")
    if status == 202:
        response.headers["Location"] = url_for("jobs.get_job", job_id=record.id)
    return response


def find_job(job_id: str) -> JobRecord:
    record = api_context().store.get(job_id)
    if record is None:
        raise Problem(404, "Not Found", f"no job {job_id!r} (unknown, or expired after its TTL)")
    return record


@blueprint.post("/jobs")
@spec.validate(
    json=JobSubmission,
    resp=SpecResponse(HTTP_202=JobRecord, **problem_responses(400, 413, 422, 503)),
    tags=["jobs"],
    skip_validation=True,
)
def create_job() -> Response:
    """Submit a job; answers 202 with its record and a Location to poll."""
    job_spec = parse_submission(json_body())
    ctx = api_context()
    idempotency_key = request.headers.get("Idempotency-Key")
    replayed = False
    try:
        if idempotency_key:
            if len(idempotency_key) > 255:
                raise field_problem("Idempotency-Key", "at most 255 characters")
            record, replayed = submit_once(
                ctx.store, ctx.celery, job_spec, g.client_name, idempotency_key
            )
        else:
            record = submit_job(ctx.store, ctx.celery, job_spec)
    except IdempotencyConflict:
        raise field_problem(
            "Idempotency-Key", "already used with a different request body"
        ) from None
    except BrokerUnavailable:
        raise broker_problem() from None
    response = record_response(record, 202)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def broker_problem() -> Problem:
    return Problem(
        503, "Service Unavailable", "Redis did not take the job; nothing was queued",
        headers={"Retry-After": "1"},
    )  # fmt: skip


@blueprint.post("/jobs/<job_id:job_id>/retry")
@spec.validate(
    resp=SpecResponse(HTTP_202=JobRecord, **problem_responses(404, 409, 503)),
    tags=["jobs"],
    skip_validation=True,
)
def retry_job(job_id: str) -> Response:
    """Queue a failed or cancelled job again, under the same id."""
    record = find_job(job_id)
    ctx = api_context()
    try:
        requeued = requeue_job(ctx.store, ctx.celery, job_id)
    except BrokerUnavailable:
        raise broker_problem() from None
    if requeued is None:
        raise Problem(
            409, "Not retryable", f"job {job_id} is {record.state}; only failed or cancelled "
            "jobs can be retried",
        )  # fmt: skip
    return record_response(requeued, 202)


@blueprint.get("/jobs/<job_id:job_id>")
@spec.validate(
    resp=SpecResponse(HTTP_200=JobRecord, **problem_responses(404)),
    tags=["jobs"],
    skip_validation=True,
)
def get_job(job_id: str) -> Response:
    """A job's state, pool, worker, timestamps, and result or error."""
    return record_response(find_job(job_id))


@blueprint.get("/jobs")
@spec.validate(
    query=JobListQuery,
    resp=SpecResponse(HTTP_200=JobPage, **problem_responses(422)),
    tags=["jobs"],
    skip_validation=True,
)
def list_jobs() -> Response:
    """Jobs, newest first, filtered and paged; follow next_cursor for the next page."""
    try:
        query = JobListQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_problem(exc) from None
    jobs, next_cursor = api_context().store.list(
        state=query.state,
        pool=query.pool,
        workload=query.workload,
        limit=query.limit,
        cursor=query.cursor,
    )
    page = JobPage(jobs=jobs, next_cursor=next_cursor)
    return Response(page.model_dump_json(), 200, mimetype="application/json")


@blueprint.delete("/jobs/<job_id:job_id>")
@spec.validate(
    resp=SpecResponse(HTTP_200=JobRecord, **problem_responses(404, 409)),
    tags=["jobs"],
    skip_validation=True,
)
def cancel_job(job_id: str) -> Response:
    """Cancel: a queued job never runs; a running one is stopped where its pool can."""
    ctx = api_context()
    record = find_job(job_id)
    answer = ctx.store.transition(job_id, {JobState.queued}, JobState.cancelled)
    if answer is None:
        raise Problem(404, "Not Found", f"no job {job_id!r}")
    moved, previous = answer
    if not moved and previous == JobState.running:
        if POOLS[record.pool].terminate_running:
            # Read while the job still runs: once cancelled, a retry may record a new id.
            task_id = ctx.store.task_id(job_id)
            moved, previous = ctx.store.transition(job_id, {JobState.running}, JobState.cancelled)
            if moved:
                # SIGUSR1 raises Celery's SoftTimeLimitExceeded inside the job, which then
                # ends like any failing job and its message is acknowledged. SIGTERM would
                # kill the pool process and leak one of the worker's prefetch slots for
                # good (acks_late + reject_on_worker_lost), halving a 2-process pool.
                ctx.celery.control.revoke(task_id, terminate=True, signal="SIGUSR1")
        else:
            ctx.store.set_fields(job_id, {"cancel_requested": True})
            raise Problem(
                409,
                "Not stoppable",
                f"job {job_id} is running on pool {record.pool!r}, which cannot stop a running "
                "job; it is marked cancel_requested and will run to its end "
                "(pools that can: "
                + ", ".join(p.name for p in POOLS.values() if p.terminate_running)
                + ")",
            )
    if not moved and previous in (JobState.succeeded, JobState.failed):
        raise Problem(409, "Already finished", f"job {job_id} already {previous}")
    return record_response(find_job(job_id))
