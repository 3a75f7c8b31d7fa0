"""Sending a job: the one function every way in (API, batch, CLI, lab) goes through."""

from __future__ import annotations

import contextlib
import time
import uuid
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


def submit_job(
    store: JobStore,
    celery: Celery,
    workload: str,
    params: dict[str, Any],
    pool: str | None = None,
) -> JobRecord:
    """Record a job as queued and send it to its pool's queue.

    `workload`, `params` and `pool` must already be validated (see `api/` or
    `Workload.validate`). The record is written before the message, so a worker never
    receives a job it cannot find; if the send fails the record is removed again and
    BrokerUnavailable is raised.
    """
    entry = get_workload(workload)
    chosen_by = "client" if pool else "default"
    pool_name = pool or DEFAULT_POOL_FOR_KIND[entry.kind]
    record = JobRecord(
        id=str(uuid.uuid4()),
        workload=workload,
        params=entry.params.model_validate(params).model_dump(mode="json"),
        pool=pool_name,
        pool_chosen_by=chosen_by,
        state=JobState.queued,
        submitted_at=time.time(),
    )
    try:
        store.create(record)
    except redis.RedisError as exc:
        raise BrokerUnavailable(str(exc)) from exc
    try:
        celery.send_task(
            RUN_JOB_TASK,
            args=[record.id],
            task_id=record.id,
            queue=POOLS[pool_name].queue,
            retry=False,
        )
    except (OperationalError, redis.RedisError) as exc:
        # If Redis is gone altogether, the orphan record expires with its TTL.
        with contextlib.suppress(redis.RedisError):
            store.delete(record)
        raise BrokerUnavailable(str(exc)) from exc
    return record
