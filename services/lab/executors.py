"""The standard library's executors, running the very workload functions the pools run.

sequential, ThreadPoolExecutor and ProcessPoolExecutor (max_workers = concurrency), and
asyncio with an async twin of each I/O workload (a CPU workload has none: a coroutine
that never awaits is just sequential code). Each run reports the same timestamps a
worker records, so local and cluster targets are measured alike.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

import httpx

from services.catalog.http_get import HTTP_MAX_BODY_BYTES, http_host_allowed
from services.catalog.workloads import get_workload

LOCAL_EXECUTORS = ("sequential", "threadpool", "processpool", "asyncio")


@dataclass(frozen=True)
class Timed:
    """One job's run, stamped like a worker stamps a job record."""

    submitted_at: float
    started_at: float
    finished_at: float
    cpu_seconds: float
    error: str | None = None
    pid: int | None = None  # the process that ran it, as a worker records worker_pid


def timed_call(workload: str, params: dict[str, Any], submitted_at: float) -> Timed:
    """Run one job and stamp it; module level so a process pool can pickle it."""
    started, cpu = time.time(), time.thread_time()
    error = None
    try:
        get_workload(workload).run(params)
    except Exception as exc:  # a failed job is counted, not raised
        error = f"{type(exc).__name__}: {exc}"
    return Timed(submitted_at, started, time.time(), time.thread_time() - cpu, error, os.getpid())


def warm_up(seconds: float) -> None:
    """Run once in each new pool process: by the time it returns, the process has imported
    the workloads (the pause lets each process take one call)."""
    get_workload("noop")
    time.sleep(seconds)


def supports_asyncio(workload: str) -> bool:
    return workload in ASYNC_TWINS


def offered_executors(workload: str) -> list[str]:
    """The local executors the lab offers for `workload`: asyncio only where it has an
    async twin (a CPU-bound coroutine never awaits, so it would be sequential code)."""
    return [name for name in LOCAL_EXECUTORS if name != "asyncio" or supports_asyncio(workload)]


async def _noop(value: Any = None) -> Any:
    return value


async def _sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


async def _http_get(url: str, timeout: float = 10, client: httpx.AsyncClient | None = None) -> int:
    if not http_host_allowed(url):
        raise ValueError(f"host of {url!r} is not in JOB_HTTP_ALLOWED_HOSTS")
    assert client is not None
    async with client.stream("GET", url, timeout=timeout, follow_redirects=False) as response:
        read = 0
        async for chunk in response.aiter_bytes():
            read += len(chunk)
            if read > HTTP_MAX_BODY_BYTES:
                break
        return response.status_code


ASYNC_TWINS: dict[str, Callable[..., Any]] = {
    "noop": _noop,
    "sleep": _sleep,
    "http_get": _http_get,
}


async def _run_asyncio(
    workload: str, params: dict[str, Any], count: int, concurrency: int, done: Callable[[], None]
) -> list[Timed]:
    twin = ASYNC_TWINS[workload]
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        extra = {"client": client} if workload == "http_get" else {}

        async def one(submitted: float) -> Timed:
            async with gate:
                started, cpu = time.time(), time.thread_time()
                error = None
                try:
                    await twin(**params, **extra)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                # thread_time here counts every coroutine of the loop: the loop's total
                # CPU is shared out below instead.
                result = Timed(
                    submitted, started, time.time(), time.thread_time() - cpu, error, os.getpid()
                )
                done()
                return result

        cpu_before = time.thread_time()
        submitted = time.time()
        results = await asyncio.gather(*(one(submitted) for _ in range(count)))
        per_job = (time.thread_time() - cpu_before) / max(1, count)
    return [replace(r, cpu_seconds=per_job) for r in results]


def run_local(
    executor: str,
    workload: str,
    params: dict[str, Any],
    count: int,
    concurrency: int,
    done: Callable[[], None] = lambda: None,
) -> list[Timed]:
    """Run `count` jobs on a local executor; `done()` is called as each one finishes."""
    if executor == "sequential":
        results = []
        submitted = time.time()
        for _ in range(count):
            results.append(timed_call(workload, params, submitted))
            done()
        return results
    if executor == "asyncio":
        if not supports_asyncio(workload):
            raise ValueError(f"asyncio has no twin for {workload!r} (CPU-bound)")
        return asyncio.run(_run_asyncio(workload, params, count, concurrency, done))
    pool: Executor
    if executor == "processpool":
        # Spawned, not forked: a fork of a Celery worker inherits its threads' locks and
        # signal handlers, and its children then hang at exit.
        pool = ProcessPoolExecutor(concurrency, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=concurrency)
    with pool:
        if executor == "processpool":
            # Start the processes before the clock runs, as a Celery pool is started
            # before its jobs arrive.
            list(pool.map(warm_up, [0.2] * concurrency))
        submitted = time.time()
        futures = [pool.submit(timed_call, workload, params, submitted) for _ in range(count)]
        results = []
        for future in as_completed(futures):
            results.append(future.result())
            done()
    return results
