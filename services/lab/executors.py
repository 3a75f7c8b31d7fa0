"""The standard library's executors, running the very workload functions the pools run.

sequential, ThreadPoolExecutor and ProcessPoolExecutor (max_workers = concurrency) call
`Workload.run`, so an async workload runs there on each thread's own event loop, as on
the threads and prefork pools. asyncio runs every workload, each as it can: an
`async def` workload natively (its coroutines awaited on one loop), the built-in I/O
workloads as their async twins (asyncio.sleep, httpx), and a plain function in threads
(loop.run_in_executor, what asyncio.to_thread does), the only way asyncio code can call
a function that blocks; `ran_as` names which, and the verdict says so. Each run reports
the same timestamps a worker records, so local and cluster targets are measured alike.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx

from services.catalog.http_get import HTTP_MAX_BODY_BYTES, http_host_allowed
from services.catalog.registry import Workload, thread_loop
from services.catalog.workloads import get_workload

LOCAL_EXECUTORS = ("sequential", "threadpool", "processpool", "asyncio")

# How the asyncio executor runs a workload: see asyncio_mode.
AsyncioMode = Literal["async twin", "coroutines", "threads"]


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
    except KeyError:
        error = f"workload {workload!r} is not in the catalog of process {os.getpid()}"
    except Exception as exc:  # a failed job is counted, not raised
        error = f"{type(exc).__name__}: {exc}"
    return Timed(submitted_at, started, time.time(), time.thread_time() - cpu, error, os.getpid())


def warm_up(workload: str, seconds: float) -> None:
    """Run once in each new pool process: by the time it returns, the process has imported
    the workloads (the pause lets each process take one call), and found `workload`."""
    try:
        get_workload(workload)
    except KeyError:
        # A spawned process loads the catalog itself, from JOBRUNNER_WORKLOADS and the
        # installed entry points; a workload registered any other way is not there.
        raise RuntimeError(
            f"processpool: a spawned process has no workload {workload!r}; it loads the "
            "catalog from JOBRUNNER_WORKLOADS and entry points, as a worker does"
        ) from None
    time.sleep(seconds)


def asyncio_mode(workload: Workload) -> AsyncioMode:
    """How the asyncio executor runs `workload`: natively when it is `async def`, through
    the async twin of a built-in I/O workload, else in threads."""
    if workload.name in ASYNC_TWINS:
        return "async twin"
    return "coroutines" if workload.is_async else "threads"


def offered_executors(workload: str) -> list[str]:
    """The local executors the lab offers for `workload`: all of them. asyncio runs a
    plain function in threads, which on CPU work is the lesson itself (the loop cannot
    make it faster; only a GIL released by the work can)."""
    return list(LOCAL_EXECUTORS)


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


# The built-in I/O workloads are plain functions (a pool runs them); these are the same
# work written for asyncio, so the asyncio target shows what the loop itself does.
ASYNC_TWINS: dict[str, Callable[..., Any]] = {
    "noop": _noop,
    "sleep": _sleep,
    "http_get": _http_get,
}


def _call_in_thread(workload: Workload, params: dict[str, Any]) -> float:
    """A plain workload on a thread of the executor; its CPU seconds, that thread's."""
    cpu = time.thread_time()
    workload.call(params)
    return time.thread_time() - cpu


async def _run_asyncio(
    workload: Workload,
    params: dict[str, Any],
    count: int,
    concurrency: int,
    done: Callable[[], None],
) -> list[Timed]:
    mode = asyncio_mode(workload)
    gate = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=concurrency)
    # Threads only for a plain function, as many as the concurrency: asyncio.to_thread's
    # default executor would pick its own size.
    threads = ThreadPoolExecutor(concurrency) if mode == "threads" else None
    async with httpx.AsyncClient(limits=limits) as client:

        async def job() -> float | None:
            """One job; its own CPU seconds where they can be told (a thread's)."""
            if mode == "threads":
                return await loop.run_in_executor(threads, _call_in_thread, workload, params)
            if mode == "coroutines":
                await workload.call(params)
                return None
            extra = {"client": client} if workload.name == "http_get" else {}
            await ASYNC_TWINS[workload.name](**params, **extra)
            return None

        async def one(submitted: float) -> Timed:
            async with gate:
                started, cpu, error = time.time(), None, None
                try:
                    cpu = await job()
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                result = Timed(submitted, started, time.time(), cpu or 0.0, error, os.getpid())
                done()
                return result

        try:
            cpu_before = time.thread_time()
            submitted = time.time()
            results = await asyncio.gather(*(one(submitted) for _ in range(count)))
            # The loop's thread_time counts every coroutine of the loop: shared out.
            per_job = (time.thread_time() - cpu_before) / max(1, count)
        finally:
            if threads is not None:
                threads.shutdown(wait=True)
    if mode == "threads":
        return results
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
        # This thread's own loop, the one Workload.run uses for the sequential target: an
        # async workload's loop-bound clients (an httpx.AsyncClient in a module global)
        # keep working from one target to the next.
        entry = get_workload(workload)
        return thread_loop().run(_run_asyncio(entry, params, count, concurrency, done))
    pool: Executor
    if executor == "processpool":
        # Spawned, not forked: a fork of a Celery worker inherits its threads' locks and
        # signal handlers, and its children then hang at exit. A spawned process imports
        # the catalog afresh, from the environment it inherits (JOBRUNNER_WORKLOADS).
        pool = ProcessPoolExecutor(concurrency, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=concurrency)
    with pool:
        if executor == "processpool":
            # Start the processes before the clock runs, as a Celery pool is started
            # before its jobs arrive.
            list(pool.map(warm_up, [workload] * concurrency, [0.2] * concurrency))
        submitted = time.time()
        futures = [pool.submit(timed_call, workload, params, submitted) for _ in range(count)]
        results = []
        for future in as_completed(futures):
            results.append(future.result())
            done()
    return results
