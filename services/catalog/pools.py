"""The execution pools a job can ask for, as data: what each is for and what it can enforce.

The Celery-specific tuning of each pool lives in `worker/profiles.py`; this half is what
the API and the lab need to know without importing Celery's worker machinery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
