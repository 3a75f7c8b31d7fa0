"""The metrics the job store counts in transition.lua, on a real Redis: each move counted
once, by the script that records it, labelled from the job's spec whatever its params."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.core.ids import new_uuid4
from services.core.vocabulary import JobState
from services.devstack.redis_server import RedisServer
from services.jobs.job_metrics import DURATION_BUCKETS, JobMetrics, read_job_metrics
from services.jobs.record import JobRecord
from services.jobs.store import JobStore


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(Path(tmp_path_factory.mktemp("job-metrics"))).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def store(server: RedisServer) -> JobStore:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    return JobStore(client, 3600)


def queued(store: JobStore, workload: str = "noop", pool: str = "threads", **extra) -> JobRecord:
    record = JobRecord(
        id=new_uuid4(), workload=workload, params=extra.pop("params", {}), pool=pool,
        pool_chosen_by="client", state=JobState.queued,
        submitted_at=extra.pop("submitted_at", time.time()),
    )  # fmt: skip
    store.create(record)
    return record


def claim(store: JobStore, job_id: str, redelivered: bool = False) -> JobRecord:
    """A worker's claim, as worker/tasks.py makes it."""
    claimed = store.transition(
        job_id, {JobState.queued, JobState.running}, JobState.running, count_attempt=True,
        return_record=True, lease_seconds=30, redelivered=redelivered,
        fields={"started_at": time.time()},
    )  # fmt: skip
    assert claimed is not None and claimed.moved and claimed.record is not None
    return claimed.record


def finish(store: JobStore, record: JobRecord, state: JobState, run_seconds: float) -> bool:
    assert record.started_at is not None
    fields = {"finished_at": record.started_at + run_seconds}
    answer = store.transition(
        record.id, {JobState.running}, state, fields=fields, fence=record.attempts
    )
    return answer is not None and answer.moved


def metrics(store: JobStore) -> JobMetrics:
    return read_job_metrics(store.redis)


def bucket_of(seconds: float) -> int:
    """The index of the histogram bucket `seconds` falls in."""
    return next(i for i, bound in enumerate(DURATION_BUCKETS) if seconds <= bound)


def test_an_outcome_is_counted_once_with_its_run_time(store: JobStore) -> None:
    record = claim(store, queued(store).id)
    assert finish(store, record, JobState.succeeded, 0.3)
    # The same outcome written again (a duplicate run's) is refused, and not counted.
    assert not finish(store, record, JobState.succeeded, 0.3)
    counted = metrics(store)
    assert counted.outcomes == {("threads", "noop", "succeeded"): 1}
    run = counted.run[("threads", "noop")]
    assert run.count == 1 and run.counts[bucket_of(0.3)] == 1
    assert run.sum_seconds == pytest.approx(0.3, abs=1e-5)
    # Prometheus's buckets are cumulative: none below 0.3 s, one from its bound on.
    cumulative = dict(run.cumulative())
    assert cumulative["0.25"] == 0 and cumulative["0.5"] == 1 and cumulative["+Inf"] == 1


def test_the_wait_is_counted_at_the_first_claim_only(store: JobStore) -> None:
    submitted_at = time.time() - 2  # waited two seconds
    record = queued(store, submitted_at=submitted_at)
    first = claim(store, record.id)
    waited_by_the_claim = time.time() - submitted_at
    # A retryable failure: queued again by its run, then claimed from a message sent
    # again, then failed for good.
    retried = store.transition(
        record.id, {JobState.running}, JobState.queued, fence=first.attempts, dispatch_in=0
    )
    assert retried is not None and retried.moved
    second = claim(store, record.id, redelivered=True)
    assert finish(store, second, JobState.failed, 0.002)
    counted = metrics(store)
    wait = counted.wait[("threads", "noop")]
    assert wait.count == 1, "the second claim is no first run"
    # The wait counted is the first claim's: no less than the two seconds set back, no
    # more than had passed once that claim returned (a second claim would add to it).
    assert 2 <= wait.sum_seconds <= waited_by_the_claim
    assert counted.retried == {("threads", "noop"): 1}
    assert counted.redelivered == {("threads", "noop"): 1}
    assert counted.outcomes == {("threads", "noop", "failed"): 1}


def test_a_fenced_write_is_counted_and_its_outcome_is_not(store: JobStore) -> None:
    record = queued(store)
    first = claim(store, record.id)
    store.set_fields(record.id, {"lease_until": store.now() - 1})  # its lease lapsed
    second = claim(store, record.id, redelivered=True)  # another run takes it over
    assert not finish(store, first, JobState.succeeded, 0.01)  # the late outcome
    counted = metrics(store)
    assert counted.fenced == {("threads", "noop"): 1}
    assert counted.outcomes == {}
    assert finish(store, second, JobState.succeeded, 0.01)
    assert metrics(store).outcomes == {("threads", "noop", "succeeded"): 1}


def test_a_cancel_is_an_outcome_without_a_run_time(store: JobStore) -> None:
    record = queued(store, pool="gevent")
    answer = store.transition(record.id, {JobState.queued}, JobState.cancelled)
    assert answer is not None and answer.moved
    counted = metrics(store)
    assert counted.outcomes == {("gevent", "noop", "cancelled"): 1}
    assert counted.run[("gevent", "noop")].count == 0
    assert counted.wait == {}  # it never started


def test_the_labels_are_the_specs_whatever_the_params_hold(store: JobStore) -> None:
    """A workload may be named anything, `|` included, and params may hold a `pool` key
    of their own: the labels are the job's, read from its spec."""
    record = queued(
        store, workload="mine|odd", pool="prefork",
        params={"pool": "threads", "workload": "noop", "nested": {"pool": "gevent"}},
    )  # fmt: skip
    assert finish(store, claim(store, record.id), JobState.succeeded, 1.5)
    counted = metrics(store)
    assert counted.outcomes == {("prefork", "mine|odd", "succeeded"): 1}
    assert counted.run[("prefork", "mine|odd")].counts[bucket_of(1.5)] == 1
