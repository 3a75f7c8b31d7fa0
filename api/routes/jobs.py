"""/jobs: submit, read, list and cancel jobs."""

from __future__ import annotations

from flask import Blueprint, Response, g, request
from pydantic import ValidationError
from spectree import Response as SpecResponse

from api.auth import count_in_write, refused_in_write
from api.context import api_context
from api.errors import Problem, broker_problem, found, problem_responses, validation_problem
from api.models import JobListQuery, JobPage, JobSubmission
from api.openapi import spec
from api.responses import record_response
from api.submissions import field_problem, json_body, parse_submission
from services.catalog.pools import POOLS
from services.core.vocabulary import JobState
from services.jobs.idempotency import IdempotencyConflict, submit_once
from services.jobs.record import JobRecord
from services.jobs.store import RateLimited
from services.jobs.submission import BrokerUnavailable, requeue_job, submit_job

blueprint = Blueprint("jobs", __name__)


def find_job(job_id: str) -> JobRecord:
    detail = f"no job {job_id!r} (unknown, or expired after its TTL)"
    return found(api_context().store.get(job_id), detail)


@blueprint.post("/jobs")
@spec.validate(
    json=JobSubmission,
    resp=SpecResponse(HTTP_202=JobRecord, **problem_responses(400, 413, 422, 503, 507)),
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
            record = submit_job(ctx.store, ctx.celery, job_spec, rate=count_in_write())
    except RateLimited as refusal:
        raise refused_in_write(refusal) from None
    except IdempotencyConflict:
        raise field_problem(
            "Idempotency-Key", "already used with a different request body"
        ) from None
    except BrokerUnavailable as exc:
        raise broker_problem(exc) from None
    response = record_response(record, 202)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


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
    except BrokerUnavailable as exc:
        raise broker_problem(exc) from None
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
    moved, previous = answer.moved, answer.previous
    if not moved and previous == JobState.running:
        if POOLS[record.pool].terminate_running:
            # Read while the job still runs: once cancelled, a retry may record a new id.
            task_id = ctx.store.task_id(job_id)
            stopped = ctx.store.transition(job_id, {JobState.running}, JobState.cancelled)
            moved = stopped is not None and stopped.moved
            previous = stopped.previous if stopped is not None else previous
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
