"""The execution pools a job can ask for, as data: what each is for and what it can enforce.

The Celery-specific tuning of each pool lives in `worker/profiles.py`; this half is what
the API and the lab need to know without importing Celery's worker machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.workloads import WorkloadKind

PoolName = Literal["threads", "prefork", "gevent"]


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
        PoolProfile("threads", "threads", 8, "io", False, False, False),
        PoolProfile("prefork", "prefork", 2, "cpu", True, True, True),
        PoolProfile("gevent", "gevent", 100, "io", False, False, False),
    )
}

DEFAULT_POOL_FOR_KIND: dict[WorkloadKind, PoolName] = {"io": "gevent", "cpu": "prefork"}
