"""A gevent worker whose every slot is taken asks for more as soon as one frees.

Nothing wakes the loop of a gevent worker when a job ends; it used to sleep out its 2 s
poll, so each refill of a full worker waited up to 2 s (services/broker/transport.py).
"""

from __future__ import annotations

import math

import redis

from services.broker.celery_app import make_celery
from services.core.settings import Settings
from services.jobs.store import JobStore
from services.jobs.submission import JobSpec, submit_jobs
from tests.stack import Stack


def test_a_full_gevent_worker_refills_without_waiting(stack: Stack) -> None:
    concurrency = stack_gevent_concurrency(stack)
    count, seconds = concurrency * 4, 0.05
    settings = Settings(redis_url=stack.redis_server.url)
    store = JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), 3600)
    # One batch, so the queue is full before the worker takes any of it.
    spec = JobSpec("sleep", {"seconds": seconds}, "gevent")
    ids = [r.id for r in submit_jobs(store, make_celery(settings), [spec] * count)]
    records = stack.wait_for(ids, timeout=60)
    assert {r["state"] for r in records} == {"succeeded"}
    ran = max(r["finished_at"] for r in records) - min(r["started_at"] for r in records)
    ideal = math.ceil(count / concurrency) * seconds  # 4 waves of 0.05 s
    # Stalled, the three refills alone took up to 6 s: 30x the ideal 0.2 s.
    assert ran < 10 * ideal, (ran, ideal)


def stack_gevent_concurrency(stack: Stack) -> int:
    (worker,) = [w for w in stack.workers if w.pool == "gevent"]
    assert worker.concurrency is not None
    return worker.concurrency
