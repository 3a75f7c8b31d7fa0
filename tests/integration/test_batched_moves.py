"""The job store's moves sent by a worker's group commit as one call of the batch script
(transition_batch.lua), on a real Redis: each move checked and answered as if alone, the
indexes and metrics they share written once, and right."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from services.core import redis_keys
from services.core.ids import new_uuid4
from services.core.vocabulary import JobState
from services.jobs.group_commit import GroupCommit
from services.jobs.job_metrics import read_job_metrics
from services.jobs.record import JobRecord
from services.jobs.store import TRANSITION_BATCH_SCRIPT, TRANSITION_SCRIPT, JobStore, Transition

JOBS = 40


def queued(store: JobStore) -> JobRecord:
    record = JobRecord(
        id=new_uuid4(), workload="noop", params={}, pool="gevent", pool_chosen_by="client",
        state=JobState.queued, submitted_at=time.time(),
    )  # fmt: skip
    store.create(record)
    return record


def claim(store: JobStore, job_id: str) -> Transition | None:
    """A worker's claim, as worker/tasks.py makes it."""
    return store.transition(
        job_id, {JobState.queued}, JobState.running, count_attempt=True, return_record=True,
        lease_seconds=30, fields={"started_at": time.time()},
    )  # fmt: skip


def finish(store: JobStore, job_id: str, attempt: int = 1) -> Transition | None:
    return store.transition(
        job_id, {JobState.running}, JobState.succeeded,
        fields={"finished_at": time.time(), "result": 1}, fence=attempt,
    )  # fmt: skip


def in_index(client: redis.Redis, state: str) -> set[str]:
    return set(client.zrange(redis_keys.job_index("state", state), 0, -1))


def calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def all_at_once(count: int, write: Callable[[int], Transition | None]) -> list:
    answers: list = [None] * count
    start = threading.Barrier(count)

    def one(n: int) -> None:
        start.wait()
        answers[n] = write(n)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def test_moves_sent_together_are_one_call_each_answered_and_indexed(
    far_redis: redis.Redis,
) -> None:
    group = GroupCommit(far_redis)
    store = JobStore(far_redis, 3600, group)
    ids = [queued(store).id for _ in range(JOBS)]
    for script in (TRANSITION_SCRIPT, TRANSITION_BATCH_SCRIPT):
        far_redis.script_load(script)  # else a first call counts twice, NOSCRIPT then run
    before = calls(far_redis, "evalsha"), calls(far_redis, "hincrby")

    claims = all_at_once(JOBS, lambda n: claim(store, ids[n]))
    assert all(answer.moved and answer.record.attempts == 1 for answer in claims)
    finishes = all_at_once(JOBS, lambda n: finish(store, ids[n]))
    assert all(answer.moved and answer.previous == JobState.running for answer in finishes)

    # 80 moves in far fewer calls: one script call per batch, whatever it held.
    assert group.batches <= 2 * JOBS / 4, group.batches
    assert calls(far_redis, "evalsha") - before[0] == group.batches
    # The metrics of moves sent together were counted once per series, not per move
    # (each move counts two series: a histogram's bucket and its sum).
    assert calls(far_redis, "hincrby") - before[1] < 2 * JOBS
    counted = read_job_metrics(far_redis)
    assert counted.outcomes == {("gevent", "noop", "succeeded"): JOBS}
    assert counted.wait[("gevent", "noop")].count == JOBS
    assert counted.run[("gevent", "noop")].count == JOBS
    assert in_index(far_redis, "succeeded") == set(ids)
    assert in_index(far_redis, "running") == in_index(far_redis, "queued") == set()


class Held:
    """Holds every batch slot of `group`, so writes queue; `release` lets one write lead
    a batch of everything queued, in order."""

    def __init__(self, group: GroupCommit) -> None:
        self.group = group
        self.threads: list[threading.Thread] = []
        self.answers: list = []
        with group._lock:
            group._in_flight = group.max_in_flight

    def queue(self, write: Callable[[], Transition | None]) -> None:
        slot = len(self.answers)
        self.answers.append(None)

        def run() -> None:
            try:
                self.answers[slot] = write()
            except redis.ResponseError as exc:
                self.answers[slot] = exc

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)
        deadline = time.monotonic() + 10
        while len(self.group._queue) < len(self.answers):  # queued in this order
            assert time.monotonic() < deadline, "the write did not queue"
            time.sleep(0.001)

    def release(self, write: Callable[[], Transition | None]) -> Transition | None:
        with self.group._lock:
            self.group._in_flight -= 1
        answer = write()
        for thread in self.threads:
            thread.join(30)
        return answer


def test_a_job_moved_twice_in_one_call_is_in_one_index(far_redis: redis.Redis) -> None:
    group = GroupCommit(far_redis)
    store = JobStore(far_redis, 3600, group)
    twice, other = queued(store).id, queued(store).id
    held = Held(group)
    held.queue(lambda: claim(store, twice))
    held.queue(lambda: finish(store, twice))  # the claim's attempt, 1
    last = held.release(lambda: claim(store, other))
    assert group.batches == 1
    claimed, finished = held.answers
    assert claimed.moved and finished.moved and last is not None and last.moved
    # queued -> running -> succeeded in one call: in the succeeded index only.
    assert in_index(far_redis, "succeeded") == {twice}
    assert in_index(far_redis, "running") == {other}
    assert in_index(far_redis, "queued") == set()
    assert read_job_metrics(far_redis).outcomes == {("gevent", "noop", "succeeded"): 1}


def test_a_move_that_fails_answers_alone_and_the_others_stand(far_redis: redis.Redis) -> None:
    group = GroupCommit(far_redis)
    store = JobStore(far_redis, 3600, group)
    good, bad, last = queued(store).id, queued(store).id, queued(store).id
    held = Held(group)
    held.queue(lambda: claim(store, good))
    # A lease of "soon" seconds: the script fails on it, after nothing was written.
    held.queue(lambda: store.transition(bad, {JobState.queued}, JobState.running,
                                        lease_seconds="soon"))  # type: ignore[arg-type]  # fmt: skip
    answer = held.release(lambda: claim(store, last))
    assert group.batches == 1
    claimed, failed = held.answers
    assert isinstance(failed, redis.ResponseError)
    assert claimed.moved and answer is not None and answer.moved
    assert in_index(far_redis, "running") == {good, last}
    assert in_index(far_redis, "queued") == {bad}
    assert far_redis.hget(redis_keys.job(bad), "state") == "queued"


def test_a_batch_script_redis_forgot_is_loaded_again(far_redis: redis.Redis) -> None:
    group = GroupCommit(far_redis)
    store = JobStore(far_redis, 3600, group)
    first, second = queued(store).id, queued(store).id
    far_redis.script_flush()  # what a Redis restart does to loaded scripts
    held = Held(group)
    held.queue(lambda: claim(store, first))
    answer = held.release(lambda: claim(store, second))
    assert held.answers[0].moved and answer is not None and answer.moved
    assert in_index(far_redis, "running") == {first, second}
