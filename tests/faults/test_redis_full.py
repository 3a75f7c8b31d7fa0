"""A full Redis (maxmemory reached, noeviction): submissions get a 507 problem and leave
nothing half-written, reads go on, a job a worker holds is not lost, and everything
recovers by itself once memory frees.

Redis is made full by setting its maxmemory below what it holds (noeviction): every write
that could grow memory is refused, as in a Redis that filled up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from tests.stack import Stack


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("redis-full"))
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker("threads", 2)
        stack.start_worker("prefork", 1)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def fill(client: redis.Redis) -> None:
    """Redis past its maxmemory, as after filling up: the limit set below what it holds.
    (Filled for real, a Redis hovers at the limit, and a small write may squeeze in.)"""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used // 2)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("a-write", "refused")


def free(client: redis.Redis) -> None:
    client.config_set("maxmemory", 0)


@pytest.fixture
def full_redis(full_stack: Stack) -> Iterator[redis.Redis]:
    client = full_stack.redis()
    fill(client)
    try:
        yield client
    finally:
        free(client)


def job_keys(client: redis.Redis) -> set[str]:
    return set(client.scan_iter(count=1000))


def assert_redis_full_problem(response: object) -> None:
    assert response.status_code == 507, response.text  # type: ignore[attr-defined]
    assert response.headers["Content-Type"] == "application/problem+json"  # type: ignore[attr-defined]
    assert int(response.headers["Retry-After"]) > 0  # type: ignore[attr-defined]
    assert "Redis is full" in response.json()["detail"]  # type: ignore[attr-defined]


def test_a_full_redis_refuses_submissions_with_507_and_stores_nothing(
    full_stack: Stack, full_redis: redis.Redis
) -> None:
    http, url = full_stack.http, full_stack.url
    keys_before = job_keys(full_redis)
    queued_before = full_redis.llen("pool.threads")
    one = http.post(f"{url}/jobs", json={"workload": "noop", "pool": "threads"}, timeout=30)
    assert_redis_full_problem(one)
    batch = http.post(f"{url}/jobs/batch", timeout=30,
                      json={"jobs": [{"workload": "noop", "pool": "threads"}] * 50})  # fmt: skip
    assert_redis_full_problem(batch)
    once = http.post(f"{url}/jobs", json={"workload": "noop"}, timeout=30,
                     headers={"Idempotency-Key": "full-redis"})  # fmt: skip
    assert_redis_full_problem(once)
    # Nothing half-written: no record, no index entry, no message, no idempotency claim.
    assert job_keys(full_redis) == keys_before
    assert full_redis.llen("pool.threads") == queued_before
    # Reads go on: a client can still watch its jobs (the rate limit cannot count, and
    # lets them through). /pools asks the workers through Redis, which takes writes.
    assert http.get(f"{url}/jobs", params={"limit": 5}, timeout=30).status_code == 200
    assert_redis_full_problem(http.get(f"{url}/pools", timeout=30))


def test_the_api_takes_jobs_again_once_memory_frees(full_stack: Stack) -> None:
    client = full_stack.redis()
    fill(client)
    refused = full_stack.http.post(f"{full_stack.url}/jobs", json={"workload": "noop"}, timeout=30)
    assert_redis_full_problem(refused)
    free(client)
    job = full_stack.submit("noop", {"value": "after"}, pool="threads")
    [record] = full_stack.wait_for([job["id"]], timeout=60)
    assert record["state"] == "succeeded" and record["result"] == "after"


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_job_held_while_redis_is_full_is_not_lost(full_stack: Stack, pool: str) -> None:
    """Its outcome cannot be written while Redis is full: the worker keeps it and keeps
    trying (worker/tasks.py, patiently), and records it once memory frees."""
    client = full_stack.redis()
    seconds = 2.0
    job = full_stack.submit("sleep", {"seconds": seconds}, pool=pool)
    full_stack.wait_for([job["id"]], states={"running"}, timeout=60)
    worker_log = next(w.log_path for w in full_stack.workers if w.pool == pool)
    refused_before = worker_log.read_text().count("> 'maxmemory'")
    fill(client)
    try:
        # The fault hit: the run ended and its outcome was refused, at least twice.
        deadline = time.monotonic() + 30
        while worker_log.read_text().count("> 'maxmemory'") < refused_before + 2:
            assert time.monotonic() < deadline, (
                "the worker's outcome write never met the full Redis"
            )
            time.sleep(0.2)
        assert full_stack.job(job["id"])["state"] == "running"
    finally:
        freed_at = time.time()
        free(client)
    [record] = full_stack.wait_for([job["id"]], timeout=60)
    assert record["state"] == "succeeded", record
    assert record["attempts"] == 1  # kept by its worker, not redelivered
    assert record["finished_at"] <= freed_at  # the outcome of the run that ended then
