"""Memory: a prefork job that allocates past WORKER_MEMORY_LIMIT_PREFORK fails as
`memory_limit` and its pool goes on; WORKER_MAX_TASKS_PER_CHILD_PREFORK replaces pool
processes; a threads job's memory is its worker's, with no limit (what the docs say)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.stack import Stack

LIMIT_MIB = 384
TASKS_PER_CHILD = 3


@pytest.fixture(scope="module")
def memory_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(
        tmp_path_factory.mktemp("memory"),
        env_overrides={
            "WORKER_MEMORY_LIMIT_PREFORK": str(LIMIT_MIB),
            "WORKER_MAX_TASKS_PER_CHILD_PREFORK": str(TASKS_PER_CHILD),
        },
    ).running([("prefork", 1), ("threads", 2)]) as stack:
        yield stack


def run(stack: Stack, workload: str, params: dict, pool: str) -> dict:
    job = stack.submit(workload, params, pool=pool)
    [record] = stack.wait_for([job["id"]], timeout=120)
    return record


def test_a_prefork_job_past_the_limit_fails_and_the_pool_goes_on(memory_stack: Stack) -> None:
    worker = next(w for w in memory_stack.workers if w.pool == "prefork")
    over = run(memory_stack, "allocate", {"mebibytes": 2 * LIMIT_MIB, "hold_ms": 0}, "prefork")
    assert over["state"] == "failed", over
    assert over["error"]["type"] == "memory_limit", over["error"]
    assert f"{LIMIT_MIB} MiB" in over["error"]["message"]
    assert over["attempts"] == 1  # failed, not retried or redelivered
    # Under the limit, the same pool (the same worker, never restarted) runs the next one.
    under = run(memory_stack, "allocate", {"mebibytes": LIMIT_MIB // 4, "hold_ms": 0}, "prefork")
    assert under["state"] == "succeeded" and under["result"] == LIMIT_MIB // 4 * 1024 * 1024
    assert worker.alive() and worker.restarts == 0


def test_pool_processes_are_replaced_after_their_tasks_per_child(memory_stack: Stack) -> None:
    pids = [
        run(memory_stack, "noop", {}, "prefork")["worker_pid"] for _ in range(TASKS_PER_CHILD * 2)
    ]
    # One pool process (-c 1), replaced after every TASKS_PER_CHILD jobs: never more
    # than that many from one process.
    assert len(set(pids)) >= 2, pids
    assert max(pids.count(pid) for pid in pids) <= TASKS_PER_CHILD, pids


def test_a_threads_job_holds_its_memory_in_the_worker_without_a_limit(
    memory_stack: Stack,
) -> None:
    """No per-job limit on threads: every job shares the worker process, so what one job
    allocates is the worker's RSS (the kernel's OOM killer would take the whole worker,
    and every job it runs would run again elsewhere)."""
    worker = psutil.Process(next(w.pid for w in memory_stack.workers if w.pool == "threads"))
    baseline = worker.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], worker.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        mebibytes = 2 * LIMIT_MIB  # past the prefork limit: threads have none
        record = run(memory_stack, "allocate", {"mebibytes": mebibytes, "hold_ms": 1000}, "threads")
    finally:
        done.set()
        sampler.join()
    assert record["state"] == "succeeded", record
    grown = (peak[0] - baseline) / 1024 / 1024
    assert grown > 0.8 * mebibytes, f"the worker grew by {grown:.0f} MiB"
    assert worker.is_running()
