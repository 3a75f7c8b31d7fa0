"""A full Redis (maxmemory reached, noeviction; or its disk full): submissions get a 507
problem and leave nothing half-written, reads go on, a job a worker holds is not lost, and
everything recovers by itself once there is room.

Redis is made full by setting its maxmemory below what it holds (noeviction): every write
that could grow memory is refused, as in a Redis that filled up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.stack import Stack


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("redis-full")).running(
        [("threads", 2), ("prefork", 1)]
    ) as stack:
        yield stack


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


def assert_redis_full_problem(response: object, says: str = "Redis is full") -> None:
    assert response.status_code == 507, response.text  # type: ignore[attr-defined]
    assert response.headers["Content-Type"] == "application/problem+json"  # type: ignore[attr-defined]
    assert int(response.headers["Retry-After"]) > 0  # type: ignore[attr-defined]
    assert says in response.json()["detail"]  # type: ignore[attr-defined]


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


# -- the disk ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def disk_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    """A stack whose Redis keeps its append-only file on a small disk of its own (a tmpfs),
    fsync every second as compose runs it (with `always`, Redis exits on a failed write)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the disk-full test needs to mount a tmpfs")
        pytest.skip("needs root, to mount a small tmpfs as Redis's disk")
    stack = Stack(tmp_path_factory.mktemp("disk-full"))
    disk = stack.workdir / "redis"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        stack.start_redis(fsync="everysec")
        stack.start_api()
        stack.start_worker("threads", 2)
        stack.wait_ready()
        yield stack, disk
    finally:
        stack.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill_disk(disk: Path) -> Path:
    """All but a few KiB of the disk taken by a file."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free - 16 * 1024))
    return filler


def test_a_full_disk_refuses_submissions_with_507_and_recovers(
    disk_stack: tuple[Stack, Path],
) -> None:
    stack, disk = disk_stack
    client = stack.redis()
    job = stack.submit("sleep", {"seconds": 2.0}, pool="threads")
    stack.wait_for([job["id"]], states={"running"}, timeout=60)
    keys_before = job_keys(client)  # and the client's connection open: under a disk
    # error Redis refuses PING too, so a new connection cannot be made until it recovers
    filler = fill_disk(disk)
    try:
        # Writes fill the last KiB, the append-only file cannot grow, Redis says MISCONF.
        deadline = time.monotonic() + 30
        while True:
            body = {"workload": "noop", "params": {"value": "x" * 4096}}
            answer = stack.http.post(f"{stack.url}/jobs", json=body, timeout=30)
            if answer.status_code == 507:
                break
            assert answer.status_code == 202, answer.text
            assert time.monotonic() < deadline, "Redis never refused a write"
        assert_redis_full_problem(answer, says="disk is full")
        keys_before = job_keys(client)  # with the jobs accepted before the disk filled
        assert_redis_full_problem(
            stack.http.post(f"{stack.url}/jobs", json={"workload": "noop"}, timeout=30),
            says="disk is full",
        )
        assert job_keys(client) == keys_before
        time.sleep(2.5)  # the held job's run ends meanwhile; its outcome cannot be written
    finally:
        filler.unlink()
    [record] = stack.wait_for([job["id"]], timeout=60)
    assert record["state"] == "succeeded" and record["attempts"] == 1, record
    # Redis refused even the consumer's BRPOP: the worker waited instead of stopping.
    [worker] = stack.workers
    assert worker.alive() and worker.restarts == 0
    assert "waiting to take messages" in worker.log_path.read_text()
    after = stack.submit("noop", {"value": "after"}, pool="threads")
    [done] = stack.wait_for([after["id"]], timeout=60)
    assert done["result"] == "after"
