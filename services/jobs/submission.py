"""Sending a job: the one function every way in (API, batch, CLI, lab) goes through."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from services.broker.celery_app import RUN_JOB_TASK
from services.broker.messages import MessageFactory, kwargs_shown
from services.catalog.pools import POOLS, default_pool_for
from services.catalog.workloads import get_workload
from services.core import redis_keys
from services.core.ids import new_uuid4
from services.core.redis_clients import storage_refusal
from services.core.settings import get_settings
from services.core.vocabulary import JobState
from services.jobs.record import JobRecord
from services.jobs.store import JobStore, RateCount, created_or_refused


class BrokerUnavailable(Exception):
    """Redis could not take the job; nothing was accepted."""


class RedisFull(BrokerUnavailable):
    """Redis refused the write while up: its memory (maxmemory, noeviction) or its disk is
    full. Nothing was accepted; it takes jobs again once there is room."""

    def __init__(self, message: str, full: str) -> None:
        super().__init__(message)
        self.full = full  # "memory" or "disk"


class NotReplicated(BrokerUnavailable):
    """The primary took the job, but fewer replicas than JOB_ACCEPT_REPLICAS confirmed it
    in time: it may run, or be lost if the primary fails now. Not accepted, then; the same
    Idempotency-Key makes sending it again safe."""


# How long an accept waits for its replicas (JOB_ACCEPT_REPLICAS): a replica answers
# within a round trip (the primary asks it at once), so this only runs out when one is
# gone or far behind. Below REDIS_SOCKET_TIMEOUT's default, or the reply would time out.
ACCEPT_WAIT_MS = 1_000


def replicas_confirm(acknowledged: int, wanted: int, jobs: int = 1) -> None:
    """NotReplicated unless `acknowledged` (WAIT's answer) reached `wanted`."""
    if acknowledged < wanted:
        what = "the job" if jobs == 1 else f"the {jobs} jobs"
        raise NotReplicated(
            f"the Redis primary stored {what}, but {acknowledged} of the {wanted} replicas "
            f"JOB_ACCEPT_REPLICAS asks for confirmed within {ACCEPT_WAIT_MS} ms: not "
            "accepted (it may still run); send it again with the same Idempotency-Key "
            "to be sure of one job"
        )


def wait_for_replicas(client: redis.Redis, wanted: int) -> None:
    """After writes made on another connection of `client` (a WATCHed transaction):
    NotReplicated unless `wanted` replicas have them. WAIT counts the replicas holding
    this connection's own last write, so it first writes a fence: replication is one
    ordered stream, and a replica holding the fence holds every write made before it."""
    pipe = client.pipeline(transaction=False)
    pipe.incr(redis_keys.replication_fence())
    pipe.wait(wanted, ACCEPT_WAIT_MS)
    *_, acknowledged = pipe.execute()
    replicas_confirm(acknowledged, wanted)


def unavailable(exc: Exception) -> BrokerUnavailable:
    """The BrokerUnavailable to raise for a failed write to Redis: RedisFull when full."""
    full = storage_refusal(exc)
    return RedisFull(str(exc), full) if full else BrokerUnavailable(str(exc))


@dataclass(frozen=True)
class JobSpec:
    """What a client asks for, already validated (see api/submissions.py)."""

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
    return default_pool_for(get_workload(spec.workload))


def new_record(spec: JobSpec, job_id: str | None = None) -> JobRecord:
    return JobRecord(
        id=job_id or new_uuid4(),
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


def send_options(record: JobRecord, task_id: str) -> dict[str, Any]:
    """How a Celery message for `record` is sent: its queue, task id and time limit."""
    options: dict[str, Any] = {"task_id": task_id, "queue": POOLS[record.pool].queue}
    if record.time_limit is not None:
        options["time_limit"] = record.time_limit
    return options


def send_job_message(
    celery: Celery, record: JobRecord, task_id: str, takeover: bool = False
) -> None:
    """Queue a message for a record already stored (a retry, a reconciliation) under
    `task_id`, which the caller records on the job first; BrokerUnavailable if it fails.

    Each re-dispatch needs a task id of its own (`new_uuid4()`), the job id travelling as
    the task's argument: cancelling a running job revokes its task id in every worker for
    hours, and a message re-sent under that id would be discarded unseen. `takeover` lets
    the message claim a job still `running` once its worker's lease has lapsed.
    """
    kwargs = {"takeover": True} if takeover else {}
    try:
        celery.send_task(
            RUN_JOB_TASK, args=[record.id], kwargs=kwargs, retry=False,
            kwargsrepr=kwargs_shown(record.workload, kwargs), **send_options(record, task_id),
        )  # fmt: skip
    except (OperationalError, redis.RedisError) as exc:
        raise unavailable(exc) from exc


@lru_cache(maxsize=16)
def message_factory(celery: Celery) -> MessageFactory:
    return MessageFactory(celery)


def job_messages(celery: Celery, records: list[JobRecord]) -> dict[str, list[str]]:
    """The first Celery message of each new record, by the Redis list of its queue, in
    submission order (kombu pushes at the head and pops at the tail: first in, first run)."""
    messages = message_factory(celery)
    queued: dict[str, list[str]] = {}
    for record in records:
        queue = POOLS[record.pool].queue
        key, payload = messages.message(record.id, queue, record.time_limit, record.workload)
        queued.setdefault(key, []).append(payload)
    return queued


def store_and_send(
    store: JobStore, celery: Celery, records: list[JobRecord], rate: RateCount | None = None
) -> None:
    """Every record, its index entries and its Celery message in one script: one round
    trip, and all of them reach Redis or none does, so a worker never receives a job it
    cannot find and no record waits for a message that was never sent.

    With `rate`, the same script counts the request against its API key's limit, and
    RateLimited (nothing stored) if it is past it. With JOB_ACCEPT_REPLICAS, a WAIT on the
    same connection follows the script in the same round trip: NotReplicated unless that
    many replicas have the jobs."""
    wanted = get_settings().job_accept_replicas
    try:
        messages = job_messages(celery, records)
        if not wanted:
            store.create_many(records, messages=messages, rate=rate)
            return
        pipe = store.redis.pipeline(transaction=False)
        store.create_many(records, messages=messages, pipe=pipe, rate=rate)
        pipe.wait(wanted, ACCEPT_WAIT_MS)
        created, acknowledged = pipe.execute()
    except (OperationalError, redis.RedisError) as exc:
        raise unavailable(exc) from exc
    created_or_refused(created, rate)
    replicas_confirm(acknowledged, wanted, len(records))


def submit_job(
    store: JobStore,
    celery: Celery,
    spec: JobSpec,
    job_id: str | None = None,
    rate: RateCount | None = None,
) -> JobRecord:
    """Record a job as queued and send it to its pool's queue; BrokerUnavailable (and
    nothing stored) if Redis cannot take it, RateLimited if `rate` counts it past its
    limit (see store_and_send)."""
    record = new_record(spec, job_id)
    store_and_send(store, celery, [record], rate)
    return record


def submit_jobs(
    store: JobStore, celery: Celery, specs: list[JobSpec], rate: RateCount | None = None
) -> list[JobRecord]:
    """Submit many jobs in one round trip, all or nothing (see store_and_send)."""
    records = [new_record(spec) for spec in specs]
    store_and_send(store, celery, records, rate)
    return records


def requeue_job(store: JobStore, celery: Celery, job_id: str) -> JobRecord | None:
    """Queue a failed or cancelled job again (POST /jobs/<id>/retry), under a new task id.

    Returns the record, or None when the job is not in a state that can be retried.
    """
    task_id = new_uuid4()
    answer = store.transition(
        job_id,
        {JobState.failed, JobState.cancelled},
        JobState.queued,
        return_record=True,
        # dispatched_at: the reconciler counts a lost message from this dispatch, not
        # from the submission.
        fields={"finished_at": None, "started_at": None, "result": None, "error": None,
                "cancel_requested": False, "attempt_errors": [], "task_id": task_id},
        dispatch_in=0,
        refresh_ttl=True,  # a retry of an old job must not expire before it runs
    )  # fmt: skip
    if answer is None or not answer.moved or answer.record is None:
        return None
    record = answer.record
    send_job_message(celery, record, task_id)
    return record
