"""Fencing, one mechanism at a time, on a real Redis: a run writes only while it holds its
attempt; leases move only forward and on Redis's clock; a run learns that it lost its
job, from Redis or, cut off from it, from its own watchdog before its lease can lapse."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.core import redis_keys
from services.core.ids import new_uuid4
from services.core.vocabulary import JobState
from services.devstack.redis_server import RedisServer, free_port
from services.jobs.record import JobRecord
from services.jobs.store import JobStore
from worker.leases import Lease, LeaseKeeper


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    server = RedisServer(Path(tmp_path_factory.mktemp("fencing"))).start()
    try:
        yield JobStore(redis.Redis.from_url(server.url, decode_responses=True), 3600)
    finally:
        server.stop()


@pytest.fixture
def keepers() -> Iterator[list[LeaseKeeper]]:
    """Keepers a test made; their threads are stopped when it ends."""
    made: list[LeaseKeeper] = []
    yield made
    for keeper in made:
        keeper.stop()


def running_job(store: JobStore, lease_seconds: float = 30.0) -> JobRecord:
    """A job claimed by a first run (attempt 1), as a worker's claim leaves it."""
    record = JobRecord(
        id=new_uuid4(), workload="noop", params={}, pool="threads", pool_chosen_by="client",
        state=JobState.queued, submitted_at=time.time(),
    )  # fmt: skip
    store.create(record)
    claimed = store.transition(
        record.id, {JobState.queued}, JobState.running, count_attempt=True,
        return_record=True, lease_seconds=lease_seconds,
        fields={"worker_node": "threads-1@w2"},
    )  # fmt: skip
    assert claimed is not None and claimed.record is not None
    assert claimed.record.attempts == 1
    return claimed.record


def lapse(store: JobStore, job_id: str) -> None:
    store.set_fields(job_id, {"lease_until": store.now() - 1})


def take_over(store: JobStore, job_id: str, node: str = "threads-1@w1") -> JobRecord:
    moved = store.transition(
        job_id, {JobState.queued, JobState.running}, JobState.running, count_attempt=True,
        return_record=True, lease_seconds=30, fields={"worker_node": node},
    )  # fmt: skip
    assert moved is not None and moved.moved and moved.record is not None
    return moved.record


def test_the_late_outcome_of_a_run_that_lost_its_job_is_refused_and_counted(
    store: JobStore,
) -> None:
    first = running_job(store)
    lapse(store, first.id)
    second = take_over(store, first.id)
    assert second.attempts == 2
    before = store.refused_writes()

    late = store.transition(
        first.id, {JobState.running}, JobState.succeeded, fence=first.attempts,
        fields={"result": "from attempt 1", "finished_at": time.time()},
    )  # fmt: skip
    assert late is not None and late.refused and not late.moved
    record = store.get(first.id)
    assert record is not None
    assert (record.state, record.result, record.finished_at) == (JobState.running, None, None)
    assert record.worker_node == "threads-1@w1"
    assert record.refused_writes == 1
    assert store.refused_writes() == before + 1

    # The run holding the job records its outcome; its fields are all its own.
    done = store.transition(
        first.id, {JobState.running}, JobState.succeeded, fence=second.attempts,
        fields={"result": "from attempt 2"},
    )  # fmt: skip
    assert done is not None and done.moved and not done.refused
    final = store.get(first.id)
    assert final is not None and final.result == "from attempt 2"


def test_a_late_retry_is_refused_like_an_outcome(store: JobStore) -> None:
    first = running_job(store)
    lapse(store, first.id)
    take_over(store, first.id)
    retry = store.transition(
        first.id, {JobState.running}, JobState.queued, fence=first.attempts, dispatch_in=5
    )
    assert retry is not None and retry.refused
    record = store.get(first.id)
    assert record is not None and record.state == JobState.running


def test_a_cancel_is_not_a_refusal(store: JobStore) -> None:
    """A run still holding its attempt that finds its job cancelled ends quietly: not a
    late write, not counted."""
    first = running_job(store)
    assert store.transition(first.id, {JobState.running}, JobState.cancelled).moved
    ended = store.transition(first.id, {JobState.running}, JobState.failed, fence=1)
    assert ended is not None and not ended.moved and not ended.refused
    record = store.get(first.id)
    assert record is not None and record.refused_writes == 0


def test_a_takeover_waits_for_the_lease_on_redis_clock(store: JobStore) -> None:
    first = running_job(store, lease_seconds=30)
    redis_now = store.now()
    lease_until = float(store.redis.hget(redis_keys.job(first.id), "lease_until"))
    # Set from Redis's clock, whatever this host's says.
    assert 29 <= lease_until - redis_now <= 30.5
    early = store.transition(first.id, {JobState.running}, JobState.running, count_attempt=True)
    assert early is not None and not early.moved
    lapse(store, first.id)
    assert take_over(store, first.id).attempts == 2


def test_renewals_move_a_lease_only_forward_and_say_which_are_lost(store: JobStore) -> None:
    held = running_job(store, lease_seconds=60)
    taken = running_job(store)
    ended = running_job(store)
    lapse(store, taken.id)
    take_over(store, taken.id)
    store.transition(ended.id, {JobState.running}, JobState.succeeded, fence=1)
    key = redis_keys.job(held.id)
    before = float(store.redis.hget(key, "lease_until"))

    lost = store.renew_leases({held.id: 1, taken.id: 1, ended.id: 1}, seconds=5)
    assert lost == {taken.id: "taken", ended.id: "ended"}
    # A shorter renewal (a late one, say) does not pull the 60 s lease back.
    assert float(store.redis.hget(key, "lease_until")) == before
    store.renew_leases({held.id: 1}, seconds=120)
    assert float(store.redis.hget(key, "lease_until")) > before
    # A renewal that lost does not touch the new attempt's lease.
    assert store.get(taken.id).attempts == 2  # type: ignore[union-attr]


def test_a_run_hears_from_redis_that_another_attempt_took_its_job(
    store: JobStore, keepers: list[LeaseKeeper]
) -> None:
    record = running_job(store)
    lost: list[Lease] = []
    keeper = LeaseKeeper(lambda: store, lease_seconds=30, on_lost=lost.append)
    keepers.append(keeper)
    lease = keeper.hold(record.id, record.attempts, time.monotonic())
    keeper.renew_once()
    assert lost == []
    lapse(store, record.id)
    take_over(store, record.id)
    keeper.renew_once()
    assert lost == [lease] and lease.lost
    keeper.renew_once()  # never renewed again
    assert lost == [lease]


def test_a_run_whose_own_outcome_ended_the_job_is_not_stopped(
    store: JobStore, keepers: list[LeaseKeeper]
) -> None:
    record = running_job(store)
    lost: list[Lease] = []
    keeper = LeaseKeeper(lambda: store, lease_seconds=30, on_lost=lost.append)
    keepers.append(keeper)
    keeper.hold(record.id, record.attempts, time.monotonic())
    # The outcome is written; the renewal that was in flight then finds the job ended.
    store.transition(record.id, {JobState.running}, JobState.succeeded, fence=1)
    keeper.renew_once()
    assert lost == []


def test_a_run_cut_off_from_redis_gives_up_before_its_lease_can_lapse(
    store: JobStore, keepers: list[LeaseKeeper]
) -> None:
    lease_seconds = 2.0
    claimed_at = time.monotonic()  # as the worker does: when the claim was sent
    record = running_job(store, lease_seconds=lease_seconds)
    lease_until = float(store.redis.hget(redis_keys.job(record.id), "lease_until"))
    # A store whose Redis does not answer: a port nothing listens on.
    unreachable = JobStore(
        redis.Redis(port=free_port(), socket_connect_timeout=0.2, decode_responses=True), 3600
    )
    gave_up_at: list[float] = []  # on Redis's clock, which decides the takeover
    gave_up = threading.Event()

    def on_lost(_: Lease) -> None:
        gave_up_at.append(store.now())
        gave_up.set()

    keeper = LeaseKeeper(lambda: unreachable, lease_seconds, on_lost=on_lost)
    keepers.append(keeper)
    keeper.hold(record.id, record.attempts, claimed_at)
    assert gave_up.wait(lease_seconds * 3), "the watchdog never gave the lease up"
    # Ordered on Redis's clock, as a share of the lease: after the renewals had their
    # chance (past half of it), and before a takeover could find it lapsed (under all).
    share_used = 1 - (lease_until - gave_up_at[0]) / lease_seconds
    assert 0.5 < share_used < 1.0, (gave_up_at, lease_until)


def test_the_old_run_ending_does_not_drop_the_lease_of_its_takeover(
    store: JobStore, keepers: list[LeaseKeeper]
) -> None:
    """A threads or gevent worker cut off, then healed, may run the old attempt and its
    takeover side by side in one process: the old run's end must leave the new run's
    lease renewed (else it lapses, and the job is taken over again and again)."""
    first = running_job(store, lease_seconds=2)
    keeper = LeaseKeeper(lambda: store, lease_seconds=30)
    keepers.append(keeper)
    old = keeper.hold(first.id, first.attempts, time.monotonic())
    lapse(store, first.id)
    second = take_over(store, first.id)
    keeper.hold(first.id, second.attempts, time.monotonic())
    keeper.release(old)
    store.set_fields(first.id, {"lease_until": store.now() + 1})
    keeper.renew_once()
    lease_until = float(store.redis.hget(redis_keys.job(first.id), "lease_until"))
    assert lease_until - store.now() > 20, "the takeover's lease was not renewed"


def test_a_watchdog_with_no_lease_held_sleeps(store: JobStore, keepers: list[LeaseKeeper]) -> None:
    """Every prefork pool process runs a watchdog; between jobs it must wait, not spin
    (a spinning one burns a core per process and slows every other thread by the GIL)."""
    record = running_job(store)
    keeper = LeaseKeeper(lambda: store, lease_seconds=1.5, on_lost=lambda _: None)
    keepers.append(keeper)
    keeper.release(keeper.hold(record.id, record.attempts, time.monotonic()))
    time.sleep(keeper.renew_every * 1.5)  # the watchdog's wait for the lease held is over
    watchdog = next(t for t in keeper.threads if t.name == "lease-watch")
    clock = time.pthread_getcpuclockid(watchdog.ident)  # type: ignore[arg-type]
    cpu_before, wall_before = time.clock_gettime(clock), time.monotonic()
    time.sleep(1.0)
    cpu = time.clock_gettime(clock) - cpu_before
    assert cpu / (time.monotonic() - wall_before) < 0.05, (
        f"the idle watchdog used {cpu:.2f} s of CPU"
    )
