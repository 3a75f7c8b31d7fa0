"""/jobs/batch: up to 1,000 jobs in one request, all accepted or none."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from spectree import Response as SpecResponse

from api.context import api_context
from api.errors import FieldError, Problem, problem_responses
from api.jobs import broker_problem, checked_spec, json_body, parse_submission
from api.models import AnySubmission, JobSubmission
from api.openapi import spec
from services.jobs import JobRecord
from services.submission import BrokerUnavailable, JobSpec, submit_jobs

blueprint = Blueprint("batch", __name__)

MAX_JOBS = 1_000
# Errors listed in one 422, so a file with a systematic mistake gives a readable answer.
MAX_ERRORS = 20


class BatchSubmission(BaseModel):
    jobs: list[JobSubmission] = Field(..., min_length=1, max_length=MAX_JOBS)


# The whole batch validated in one call into pydantic-core, without a model per item.
_BATCH_ITEMS = TypeAdapter(list[AnySubmission])


class BatchAccepted(BaseModel):
    jobs: list[JobRecord]


def parse_batch(body: Any) -> list[JobSpec]:
    """Every job validated as the single POST /jobs would; a 422 names each bad item
    (`jobs.3.params.seconds`), and then nothing is accepted."""
    if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
        raise Problem(422, "Validation failed", 'the body must be {"jobs": [...]}')
    items = body["jobs"]
    if not 1 <= len(items) <= MAX_JOBS:
        raise Problem(
            422, "Validation failed", f"jobs: between 1 and {MAX_JOBS} jobs per request",
            [FieldError(field="jobs", message=f"{len(items)} jobs; at most {MAX_JOBS}")],
        )  # fmt: skip
    try:
        # The whole batch in one call into pydantic-core: a thousand model_validate calls
        # cost more than the validation itself.
        submissions = _BATCH_ITEMS.validate_python(items)
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


@blueprint.before_request
def _larger_body_for_batches() -> None:
    # A thousand jobs need more room than one; the single-job limit stays small.
    request.max_content_length = api_context().settings.job_max_batch_body_bytes


@blueprint.post("/jobs/batch")
@spec.validate(
    json=BatchSubmission,
    resp=SpecResponse(HTTP_202=BatchAccepted, **problem_responses(400, 413, 422, 503)),
    tags=["jobs"],
    skip_validation=True,
)
def create_batch() -> Response:
    """Submit up to 1,000 jobs: validated as a whole, stored and queued in one round trip
    to Redis, all or nothing."""
    specs = parse_batch(json_body())
    ctx = api_context()
    try:
        records = submit_jobs(ctx.store, ctx.celery, specs)
    except BrokerUnavailable:
        raise broker_problem() from None
    body = BatchAccepted(jobs=records)
    return Response(body.model_dump_json(), 202, mimetype="application/json")
