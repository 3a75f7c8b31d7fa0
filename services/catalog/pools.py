"""The execution pools a job can ask for, as data: what each is for and what it can enforce.

The Celery-specific tuning of each pool lives in `worker/profiles.py`; this half is what
the API and the lab need to know without importing Celery's worker machinery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from services.catalog.registry import Workload
from services.core.vocabulary import PoolName, WorkloadKind


@dataclass(frozen=True)
class PoolProfile:
    name: PoolName
    celery_pool: str
    concurrency: int
    suited_to: WorkloadKind
    # What the pool can enforce, answered honestly to clients (GET /pools):
    hard_time_limit: bool  # only a child process can be killed when a job overruns
    terminate_running: bool  # likewise for cancelling a job that already runs
    memory_isolation: bool  # a job's memory dies with its process

    @property
    def queue(self) -> str:
        return f"pool.{self.name}"


POOLS: dict[str, PoolProfile] = {
    p.name: p
    for p in (
        # 8 threads: enough to overlap a handful of blocking waits; past that the
        # threads mostly queue for the one GIL (the lab's sleep sweep flattens there).
        PoolProfile("threads", "threads", 8, "io", False, False, False),
        # One process per core (Celery's own default): CPU-bound work cannot run on more
        # cores than there are, so more processes only add switching (the lab's scale
        # sweep and the benchmark's cpu_hash figure show it: docs/performance.md).
        PoolProfile("prefork", "prefork", os.cpu_count() or 2, "cpu", True, True, True),
        # 100 greenlets: a waiting greenlet costs little memory (bench/RESULTS.md has the
        # figure), so hundreds of concurrent waits are cheap; raise it for more.
        PoolProfile("gevent", "gevent", 100, "io", False, False, False),
    )
}

DEFAULT_POOL_FOR_KIND: dict[WorkloadKind, PoolName] = {"io": "gevent", "cpu": "prefork"}


def pool_cannot_run(workload: Workload, pool: str) -> str | None:
    """Why `pool` cannot run `workload` well, or None when it can."""
    if workload.is_async and POOLS[pool].celery_pool == "gevent":
        # asyncio keeps one running loop per OS thread, and every greenlet of a gevent
        # worker shares one thread: its async jobs would run one at a time.
        return (
            f"{workload.name} is an async workload, and gevent's greenlets share one OS "
            "thread, where asyncio runs one event loop at a time (one job at a time)"
        )
    return None


def default_pool_for(workload: Workload) -> str:
    """The pool a job of `workload` goes to when it names none."""
    if workload.default_pool is not None:
        return workload.default_pool  # checked at load to run it and enforce its limit
    if workload.time_limit is not None:
        # Its jobs have a time limit unless they say otherwise: a pool that can kill.
        return next(p.name for p in POOLS.values() if p.hard_time_limit)
    if workload.is_async and workload.kind == "io":
        return "threads"  # each thread has its own event loop; gevent cannot (above)
    return DEFAULT_POOL_FOR_KIND[workload.kind]
