"""A re-sent message never makes a job run twice."""

from __future__ import annotations

import time

import redis

from services.broker import make_celery
from services.jobs import JobStore
from services.reconcile import requeue_lost_jobs
from services.settings import Settings
from tests.stack import Stack


def test_duplicate_message_of_a_waiting_job_runs_it_once(stack: Stack) -> None:
    blockers = [stack.submit("sleep", {"seconds": 1}, pool="prefork")["id"] for _ in range(2)]
    stack.wait_for(blockers, states={"running"})
    waiting = stack.submit("noop", {"value": "once"}, pool="prefork")["id"]

    settings = Settings(redis_url=stack.redis_server.url)
    store = JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), 3600)
    resent = requeue_lost_jobs(store, make_celery(settings), older_than=0)
    assert waiting in resent
    assert stack.redis().llen("pool.prefork") == 2  # the original and the duplicate

    (done,) = stack.wait_for([waiting], timeout=30)
    assert done["state"] == "succeeded" and done["attempts"] == 1
    stack.wait_for(blockers)
    # Both messages are consumed; the second finds the job no longer queued.
    deadline = time.monotonic() + 20
    while stack.redis().llen("pool.prefork") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.redis().llen("pool.prefork") == 0
    time.sleep(0.5)
    assert stack.job(waiting)["attempts"] == 1
