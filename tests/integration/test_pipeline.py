"""A prefork worker's pipeline (worker/pipeline.py), one mechanism at a time on a real
Redis, then whole in a real prefork worker: jobs claimed on the take, a job that waited
in the worker checked before it starts, outcomes written behind the run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
import redis
from kombu import Connection

from services.broker.celery_app import make_celery
from services.broker.transport import Transport
from services.catalog.pools import POOLS
from services.core.settings import Settings
from services.core.vocabulary import JobState
from services.devstack.redis_server import RedisServer
from services.jobs.job_metrics import read_job_metrics
from services.jobs.record import JobRecord, decode_record
from services.jobs.store import JobStore, Move
from services.jobs.submission import JobSpec, new_record, store_and_send
from tests.stack import Stack, workload_module
from worker.pipeline import (
    CLAIM_HEADER,
    DEPTH,
    ClaimOnTake,
    Outcome,
    OutcomeWriter,
    lease_after_wait,
)

QUEUE = POOLS["prefork"].queue


def job_store(server: RedisServer) -> JobStore:
    return JobStore(redis.Redis.from_url(server.url, decode_responses=True), 3600)


def queued_jobs(server: RedisServer, store: JobStore, count: int) -> list[JobRecord]:
    """`count` no-op jobs for prefork, recorded and their messages queued, as the API does."""
    records = [new_record(JobSpec(workload="noop", pool="prefork")) for _ in range(count)]
    store_and_send(store, make_celery(Settings(redis_url=server.url)), records)
    return records


def claiming_consumer(
    server: RedisServer, store: JobStore, prefetch: int
) -> tuple[Connection, object, list]:
    """A consumer of prefork's queue whose takes claim, as a prefork worker's do with
    its pipeline on, and the messages it got (not acknowledged)."""
    connection = Connection(server.url, transport=Transport)
    connection.connect()
    channel = connection.channel()
    channel.claims = ClaimOnTake("on", 30.0, "host-a", "prefork@host-a", lambda: store)
    channel.basic_qos(prefetch_count=prefetch)
    got: list = []
    channel.basic_consume(QUEUE, no_ack=False, callback=got.append, consumer_tag="t")
    return connection, channel, got


def drain_until(connection: Connection, done: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.2)


def test_a_take_claims_the_jobs_of_the_messages_it_takes(server: RedisServer) -> None:
    store = job_store(server)
    records = queued_jobs(server, store, 6)
    cancelled = records[-1]
    assert store.transition(cancelled.id, {JobState.queued}, JobState.cancelled).moved
    connection, _channel, got = claiming_consumer(server, store, prefetch=10)
    drain_until(connection, lambda: len(got) >= len(records))
    assert len(got) == len(records)

    # The first message came by BRPOP, alone, and is left for its pool process to claim;
    # the take after it claimed the others' jobs in its own round trip.
    first, *taken = got
    assert CLAIM_HEADER not in first.headers
    assert store.get(records[0].id).state == JobState.queued
    claimed = [m for m in taken if CLAIM_HEADER in m.headers]
    assert len(claimed) == 4, [m.headers.get("argsrepr") for m in taken]
    redis_now = store.now()
    for message in claimed:
        claim = message.headers[CLAIM_HEADER]
        carried = decode_record(claim["record"])  # what the pool process will run
        assert carried.state == JobState.running and carried.attempts == 1
        record = store.get(carried.id)
        assert record.state == JobState.running and record.attempts == 1
        assert (record.worker_host, record.worker_node) == ("host-a", "prefork@host-a")
        assert record.worker_pid is None  # the pool process that runs it is not known yet
        assert store.task_id(record.id) == message.headers["id"]
        assert float(store.redis.hget(f"jobrunner:job:{record.id}", "lease_until")) > redis_now
        assert claim["at"] <= time.monotonic()
    # The cancelled job's message goes on without a claim, and its job stays cancelled.
    [late] = [m for m in taken if CLAIM_HEADER not in m.headers]
    assert cancelled.id in late.headers["argsrepr"]
    assert store.get(cancelled.id).state == JobState.cancelled
    assert read_job_metrics(store.redis).claimed_on_take == {("prefork", "noop"): 4}
    connection.release()


def test_messages_that_go_back_unrun_give_their_claims_back(server: RedisServer) -> None:
    """A worker stopping with messages it claimed but never ran (or a pool process that
    died with one) puts them back in the queue: their jobs go back to `queued`, so the
    next taker runs them at once, not after a lease nobody renews."""
    store = job_store(server)
    records = queued_jobs(server, store, 5)
    connection, channel, got = claiming_consumer(server, store, prefetch=10)
    drain_until(connection, lambda: len(got) >= len(records))
    claimed = [m for m in got if CLAIM_HEADER in m.headers]
    assert len(claimed) == 4
    # One goes back alone (Celery's requeue of a lost pool process's message); the
    # rest at the channel's close (a stopping worker's unacknowledged messages).
    requeued = decode_record(claimed[0].headers[CLAIM_HEADER]["record"]).id
    claimed[0].reject(requeue=True)
    assert store.get(requeued).state == JobState.queued
    channel.close()
    connection.release()
    for record in records:
        again = store.get(record.id)
        # Back to queued; the attempt the claim counted stays counted (its fence).
        assert again.state == JobState.queued, again
        assert again.attempts == (
            1 if any(record.id in m.headers["argsrepr"] for m in claimed) else 0
        )
        assert again.worker_node is None and again.received_at is None
    assert store.redis.llen(QUEUE) == len(records)  # every message back in the queue
    assert read_job_metrics(store.redis).retried == {}  # a claim given back is no retry


def test_while_jobs_are_short_a_claiming_worker_holds_several_messages_a_slot(
    server: RedisServer,
) -> None:
    store = job_store(server)
    queued_jobs(server, store, 30)
    connection, channel, got = claiming_consumer(server, store, prefetch=2)
    # The first messages, acknowledged at once: jobs far shorter than a round trip.
    for _ in range(3):
        drain_until(connection, lambda: len(got) >= 1)
        while got:
            got.pop().ack()
    # Now it holds DEPTH messages a slot, unacknowledged, and no more.
    drain_until(connection, lambda: len(got) >= 2 * DEPTH, seconds=5)
    assert len(got) == 2 * DEPTH, len(got)
    drain_until(connection, lambda: len(got) > 2 * DEPTH, seconds=1)
    assert len(got) == 2 * DEPTH
    assert channel.qos.depth == DEPTH
    connection.release()


def claimed_job(store: JobStore, server: RedisServer) -> JobRecord:
    [record] = queued_jobs(server, store, 1)
    moved = store.transition(
        record.id, {JobState.queued}, JobState.running, count_attempt=True,
        return_record=True, lease_seconds=30,
    )  # fmt: skip
    assert moved is not None and moved.record is not None
    return moved.record


def taken_over(record: JobRecord, store: JobStore) -> JobRecord:
    """`record`, claimed, after its lease lapsed and another attempt claimed the job: the
    record as its first attempt knows it."""
    store.set_fields(record.id, {"lease_until": store.now() - 1})
    assert store.transition(
        record.id, {JobState.running}, JobState.running, count_attempt=True, lease_seconds=30
    ).moved
    return record


def test_a_job_that_waited_in_its_worker_is_checked_before_it_starts(
    server: RedisServer,
) -> None:
    store = job_store(server)
    renew_every, lease = 1.0, 30.0

    fresh = claimed_job(store, server)
    just_now = time.monotonic()
    assert lease_after_wait(store, fresh, just_now, renew_every, lease) == just_now

    # Waited past a renewal: renewed now, and counted from now.
    waited = claimed_job(store, server)
    key = f"jobrunner:job:{waited.id}"
    before = float(store.redis.hget(key, "lease_until"))
    time.sleep(0.05)
    since = lease_after_wait(store, waited, time.monotonic() - 5, renew_every, lease)
    assert since is not None and since > just_now
    assert float(store.redis.hget(key, "lease_until")) > before

    # Taken over meanwhile (its lease lapsed, another attempt claimed it), or cancelled:
    # not run.
    taken = taken_over(claimed_job(store, server), store)
    assert lease_after_wait(store, taken, time.monotonic() - 5, renew_every, lease) is None
    ended = claimed_job(store, server)
    assert store.transition(ended.id, {JobState.running}, JobState.cancelled).moved
    assert lease_after_wait(store, ended, time.monotonic() - 5, renew_every, lease) is None


def test_a_run_claimed_on_the_take_that_waited_starts_only_if_its_job_is_still_held(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above, where a pool process calls it (worker/tasks.py,
    run_claimed_on_take): a job that waited in its worker past a renewal runs if its
    attempt still holds it, and not at all once another attempt took it over."""
    from worker import pipeline, tasks  # a worker's modules: the Celery app, the catalog

    store = job_store(server)
    # The pool process's lease keeper and outcome writer, on this test's Redis.
    monkeypatch.setattr(tasks, "leases", tasks.LeaseKeeper(lambda: store, 30.0))
    long_ago = time.monotonic() - 10 * tasks.leases.renew_every
    try:
        still_held = claimed_job(store, server)
        tasks.run_claimed_on_take(tasks.run_job, store, still_held, long_ago)
        pipeline.outcomes.drain(timeout=10)
        assert store.get(still_held.id).state == JobState.succeeded

        taken = taken_over(claimed_job(store, server), store)
        tasks.run_claimed_on_take(tasks.run_job, store, taken, long_ago)
        pipeline.outcomes.drain(timeout=10)
        # Not run: had it run, its outcome would have been written and refused (its fence
        # is the attempt that lost the job), and counted.
        after = store.get(taken.id)
        assert (after.state, after.attempts, after.refused_writes) == (JobState.running, 2, 0)
    finally:
        tasks.leases.stop()


def outcome_of(store: JobStore, record: JobRecord, answers: list) -> Outcome:
    fields = {"result": record.id, "finished_at": time.time()}
    move = Move(record.id, frozenset({JobState.running}), JobState.succeeded, fields, fence=1)
    return Outcome(store, move, answers.append)


def test_outcomes_waiting_go_in_one_call_and_are_written_before_the_process_exits(
    server: RedisServer,
) -> None:
    store = job_store(server)
    jobs = [claimed_job(store, server) for _ in range(20)]
    writer, answers = OutcomeWriter(), []
    store.redis.config_resetstat()
    for record in jobs:
        writer.submit(outcome_of(store, record, answers))
    writer.drain()  # what a pool process does as it exits (worker_process_shutdown)
    assert len(answers) == len(jobs) and all(answer.moved for answer in answers)
    for record in jobs:
        assert store.get(record.id).state == JobState.succeeded
    # Twenty outcomes in far fewer calls than twenty: those waiting share one.
    calls = store.redis.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert 1 <= calls < len(jobs) // 2, calls


def test_an_outcome_waits_for_redis_to_come_back(server: RedisServer) -> None:
    store = job_store(server)
    record, answers, writer = claimed_job(store, server), [], OutcomeWriter()
    server.stop()
    writer.submit(outcome_of(store, record, answers))
    time.sleep(0.5)
    server.start()
    writer.drain()
    assert answers[0].moved and store.get(record.id).state == JobState.succeeded


# -- whole, in a prefork worker --------------------------------------------------------

FAILING = """
from jobrunner import workload

@workload(default_pool="prefork")
def explode(message: str = "boom") -> None:
    raise ValueError(message)
"""


@pytest.fixture(scope="module")
def pipelined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("pipelined")
    env = {**workload_module(folder, "explosives", FAILING), "WORKER_PREFORK_PIPELINE": "on"}
    with Stack(folder, env_overrides=env).running([("prefork", 2)]) as stack:
        yield stack


def test_a_pipelined_prefork_worker_records_each_job_once_from_its_pool_process(
    pipelined: Stack,
) -> None:
    jobs = [{"workload": "noop", "params": {"value": i}, "pool": "prefork"} for i in range(60)]
    jobs += [{"workload": "explode", "params": {"message": f"no {i}"}} for i in range(4)]
    answer = pipelined.http.post(f"{pipelined.url}/jobs/batch", json={"jobs": jobs}, timeout=60)
    assert answer.status_code == 202, answer.text[:500]
    ids = [job["id"] for job in answer.json()["jobs"]]
    records = pipelined.wait_for(ids, timeout=120)

    [worker] = pipelined.workers
    pool_pids = {child.pid for child in psutil.Process(worker.pid).children()}
    for i, record in enumerate(records):
        if i < 60:
            assert record["state"] == "succeeded" and record["result"] == i, record
        else:
            assert record["state"] == "failed", record
            assert record["error"] == {"type": "ValueError", "message": f"no {i - 60}"}
        assert record["attempts"] == 1, record
        # The outcome names the pool process that ran the job, and its own start.
        assert record["worker_pid"] in pool_pids, (record["worker_pid"], pool_pids)
        assert record["received_at"] <= record["started_at"] <= record["finished_at"], record
    # Most jobs rode on takes (the first of a burst comes by BRPOP, claimed as before).
    counted = read_job_metrics(pipelined.redis()).claimed_on_take
    assert sum(counted.values()) >= len(jobs) // 2, counted
