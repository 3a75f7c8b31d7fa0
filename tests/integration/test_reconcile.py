"""The reconciler: a re-sent message never makes a job run twice, and no lost job hides."""

from __future__ import annotations

import time

import redis

from services.broker.celery_app import make_celery
from services.core.ids import new_uuid4
from services.core.settings import Settings
from services.core.vocabulary import JobState
from services.jobs.reconcile import requeue_lost_jobs
from services.jobs.record import JobRecord
from services.jobs.store import JobStore
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


def test_a_crowd_of_jobs_just_sent_again_does_not_hide_a_lost_one(stack: Stack) -> None:
    """The sweep pages past the jobs it skips: eight queued jobs whose messages were sent
    again a moment ago come first (oldest), and the lost job behind them still gets its
    message, though one call re-sends at most five."""
    settings = Settings(redis_url=stack.redis_server.url)
    store = JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), 3600)
    now = time.time()
    crowd = [queued_record(submitted_at=now - 100 + i) for i in range(8)]
    lost = queued_record(submitted_at=now - 50)
    store.create_many([*crowd, lost])  # records without messages
    for record in crowd:
        store.set_fields(record.id, {"dispatched_at": now})

    resent = requeue_lost_jobs(store, make_celery(settings), older_than=30, batch=5)
    assert resent == [lost.id]
    (done,) = stack.wait_for([lost.id], timeout=30)
    assert done["state"] == "succeeded" and done["attempts"] == 1
    for record in crowd:  # they would wait for a sweep an hour from now: stop them
        assert stack.http.delete(f"{stack.url}/jobs/{record.id}", timeout=10).ok


def queued_record(submitted_at: float) -> JobRecord:
    return JobRecord(
        id=new_uuid4(), workload="noop", params={"value": "lost"}, pool="threads",
        pool_chosen_by="client", state=JobState.queued, submitted_at=submitted_at,
    )  # fmt: skip
