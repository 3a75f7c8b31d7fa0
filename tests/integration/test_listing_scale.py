"""GET /jobs stays paged, and a page costs the same with 100,000 stored jobs as with 1,000.

Cost is counted as Redis commands (INFO commandstats), which does not depend on how busy
the machine is: a page reads its own ids from a sorted set and their records, nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.core.vocabulary import JobState
from services.devstack.redis_server import RedisServer
from services.jobs.record import JobRecord
from services.jobs.store import JobStore


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    server = RedisServer(Path(tmp_path_factory.mktemp("listing")))
    server.start()
    try:
        yield JobStore(redis.Redis.from_url(server.url, decode_responses=True), 86_400)
    finally:
        server.stop()


def fill(store: JobStore, count: int, start: int) -> None:
    now = time.time()
    pools, workloads = ("threads", "prefork", "gevent"), ("noop", "sleep", "cpu_hash")
    for first in range(start, start + count, 2_000):
        pipe = store.redis.pipeline(transaction=False)
        for n in range(first, min(first + 2_000, start + count)):
            record = JobRecord(
                id=f"job-{n:07d}", workload=workloads[n % 3], params={}, pool=pools[n % 3],
                pool_chosen_by="client", state=JobState.succeeded,
                submitted_at=now - 3_600 + n / 1_000,
            )  # fmt: skip
            store.create(record, pipe=pipe)
        pipe.execute()


def commands(store: JobStore) -> int:
    return sum(v["calls"] for v in store.redis.info("commandstats").values())


def page_cost(store: JobStore, **filters: str) -> int:
    before = commands(store)
    page, cursor = store.list(limit=50, **filters)
    after = commands(store)
    assert len(page) == 50 and cursor is not None
    second, _ = store.list(limit=50, cursor=cursor, **filters)
    assert not {r.id for r in page} & {r.id for r in second}
    assert [r.submitted_at for r in page + second] == sorted(
        (r.submitted_at for r in page + second), reverse=True
    )
    return after - before - 1  # INFO itself counts once


def test_page_cost_does_not_grow_with_stored_jobs(store: JobStore) -> None:
    fill(store, 1_000, 0)
    small = {name: page_cost(store, **f) for name, f in FILTERS.items()}
    fill(store, 99_000, 1_000)
    assert store.redis.zcard("jobrunner:jobs") == 100_000
    large = {name: page_cost(store, **f) for name, f in FILTERS.items()}
    assert large == small, (small, large)


FILTERS = {
    "all": {},
    "pool": {"pool": "prefork"},
    "workload": {"workload": "sleep"},
    "state": {"state": "succeeded"},
}


def test_expired_ids_leave_every_index(store: JobStore) -> None:
    short = JobStore(store.redis, ttl_seconds=60)
    short.create(submitted_two_minutes_ago("expired-one"))
    indexes = [i for i in short.redis.scan_iter(match="jobrunner:jobs*") if
               short.redis.zscore(i, "expired-one") is not None]  # fmt: skip
    assert len(indexes) == 4  # all, pool, workload, state
    short.redis.delete("jobrunner:job:expired-one")  # as its TTL would
    assert short.prune_indexes() >= 4
    assert all(short.redis.zscore(i, "expired-one") is None for i in indexes)


def test_a_record_kept_past_its_first_ttl_stays_listed(store: JobStore) -> None:
    """A retry restarts its record's TTL: submitted long ago, still there, still listed."""
    short = JobStore(store.redis, ttl_seconds=60)
    short.create(submitted_two_minutes_ago("retried-one"))
    short.prune_indexes()
    page, _ = short.list(state="queued", limit=500)
    assert "retried-one" in {r.id for r in page}
    assert short.redis.zscore("jobrunner:jobs", "retried-one") is not None


def submitted_two_minutes_ago(job_id: str) -> JobRecord:
    """A queued record older than a 60 s TTL, by its submission time."""
    return JobRecord(
        id=job_id, workload="noop", params={}, pool="gevent", pool_chosen_by="client",
        state=JobState.queued, submitted_at=time.time() - 120,
    )  # fmt: skip
