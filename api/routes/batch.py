"""/jobs/batch: up to 1,000 jobs in one request, all accepted or none."""

from __future__ import annotations

from flask import Blueprint, Response, request
from spectree import Response as SpecResponse

from api.auth import count_in_write, refused_in_write
from api.context import api_context
from api.errors import broker_problem, problem_responses
from api.models import BatchAccepted, BatchSubmission
from api.openapi import spec
from api.responses import json_response
from api.submissions import json_body, parse_batch
from services.jobs.store import RateLimited
from services.jobs.submission import BrokerUnavailable, submit_jobs

blueprint = Blueprint("batch", __name__)


@blueprint.before_request
def _larger_body_for_batches() -> None:
    # A thousand jobs need more room than one; the single-job limit stays small.
    request.max_content_length = api_context().settings.job_max_batch_body_bytes


@blueprint.post("/jobs/batch")
@spec.validate(
    json=BatchSubmission,
    resp=SpecResponse(HTTP_202=BatchAccepted, **problem_responses(400, 413, 422, 503, 507)),
    tags=["jobs"],
    skip_validation=True,
)
def create_batch() -> Response:
    """Submit up to 1,000 jobs: validated as a whole, stored and queued in one round trip
    to Redis, all or nothing."""
    specs = parse_batch(json_body())
    ctx = api_context()
    try:
        records = submit_jobs(ctx.store, ctx.celery, specs, rate=count_in_write())
    except RateLimited as refusal:
        raise refused_in_write(refusal) from None
    except BrokerUnavailable as exc:
        raise broker_problem(exc) from None
    return json_response(BatchAccepted(jobs=records), 202)
