"""Sending a job: the one function every way in (API, batch, CLI, lab) goes through."""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from services.broker import RUN_JOB_TASK
from services.jobs import JobRecord, JobState, JobStore
from services.pools import DEFAULT_POOL_FOR_KIND, POOLS
from services.workloads import get_workload


class BrokerUnavailable(Exception):
    """Redis could not take the job; nothing was accepted."""


@dataclass(frozen=True)
class JobSpec:
    """What a client asks for, already validated (see api/jobs.parse_submission)."""

    workload: str
    params: dict[str, Any] = field(default_factory=dict)
    pool: str | None = None
    max_retries: int = 0
    backoff: float = 1.0
    time_limit: int | None = None


def default_pool(spec: JobSpec) -> str:
    """The pool suited to the workload's kind; a time limit needs a pool that can kill."""
    if spec.time_limit is not None:
        return next(p.name for p in POOLS.values() if p.hard_time_limit)
    return DEFAULT_POOL_FOR_KIND[get_workload(spec.workload).kind]


def new_record(spec: JobSpec, job_id: str | None = None) -> JobRecord:
    return JobRecord(
        id=job_id or str(uuid.uuid4()),
        workload=spec.workload,
        params=dict(spec.params),
        pool=spec.pool or default_pool(spec),
        pool_chosen_by="client" if spec.pool else "default",
        state=JobState.queued,
        submitted_at=time.time(),
        max_retries=spec.max_retries,
        backoff=spec.backoff,
        time_limit=spec.time_limit,
    )


def send_options(record: JobRecord) -> dict[str, Any]:
    """How the Celery message for `record` is sent: its queue, id and time limit."""
    options: dict[str, Any] = {"task_id": record.id, "queue": POOLS[record.pool].queue}
    if record.time_limit is not None:
        options["time_limit"] = record.time_limit
    return options


def send_job_message(celery: Celery, record: JobRecord) -> None:
    """Queue the message that makes a worker run `record`; BrokerUnavailable if it fails."""
    try:
        celery.send_task(RUN_JOB_TASK, args=[record.id], retry=False, **send_options(record))
    except (OperationalError, redis.RedisError) as exc:
        raise BrokerUnavailable(str(exc)) from exc


def submit_job(
    store: JobStore, celery: Celery, spec: JobSpec, job_id: str | None = None
) -> JobRecord:
    """Record a job as queued and send it to its pool's queue.

    The record is written before the message, so a worker never receives a job it cannot
    find; if the send fails the record is removed again and BrokerUnavailable is raised.
    """
    record = new_record(spec, job_id)
    try:
        store.create(record)
    except redis.RedisError as exc:
        raise BrokerUnavailable(str(exc)) from exc
    try:
        send_job_message(celery, record)
    except BrokerUnavailable:
        # If Redis is gone altogether, the orphan record expires with its TTL.
        with contextlib.suppress(redis.RedisError):
            store.delete(record)
        raise
    return record


def submit_jobs(store: JobStore, celery: Celery, specs: list[JobSpec]) -> list[JobRecord]:
    """Submit many jobs in two pipelined round trips: every record in one transaction,
    then every message in one kombu publish batch. All or nothing: if the messages cannot
    be sent, the records are removed again and BrokerUnavailable is raised."""
    records = [new_record(spec) for spec in specs]
    try:
        pipe = store.redis.pipeline(transaction=True)
        for record in records:
            store.create(record, pipe=pipe)
        pipe.execute()
    except redis.RedisError as exc:
        raise BrokerUnavailable(str(exc)) from exc
    try:
        with celery.producer_or_acquire() as producer, producer.batch(max_size=len(records)):
            for record in records:
                celery.send_task(
                    RUN_JOB_TASK, args=[record.id], producer=producer, **send_options(record)
                )
    except (OperationalError, redis.RedisError) as exc:
        with contextlib.suppress(redis.RedisError):
            for record in records:
                store.delete(record)
        raise BrokerUnavailable(str(exc)) from exc
    return records


def requeue_job(store: JobStore, celery: Celery, job_id: str) -> JobRecord | None:
    """Queue a failed or cancelled job again (POST /jobs/<id>/retry).

    Returns the record, or None when the job is not in a state that can be retried.
    """
    answer = store.transition(
        job_id,
        {JobState.failed, JobState.cancelled},
        JobState.queued,
        fields={"finished_at": None, "started_at": None, "result": None, "error": None,
                "cancel_requested": False, "attempt_errors": []},
    )  # fmt: skip
    if answer is None or not answer[0]:
        return None
    record = store.get(job_id)
    assert record is not None
    send_job_message(celery, record)
    return record
