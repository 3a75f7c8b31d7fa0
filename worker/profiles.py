"""How each pool's worker is started: the `celery worker` command line of every profile.

The declarative half (queue, concurrency, capabilities) is `services.pools.PoolProfile`;
this adds what only the worker process needs. One function builds the command, so the
compose file, the local runner and the tests start workers the same way.
"""

from __future__ import annotations

import sys

from services.broker import LAB_QUEUE
from services.pools import POOLS


def lab_command(node_name: str | None = None, loglevel: str = "INFO") -> list[str]:
    """The lab worker: one experiment at a time (concurrency 1), so experiments never
    measure each other. A threads pool, so its executors may start processes."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--pool", "threads", "--concurrency", "1", "--queues", LAB_QUEUE,
        "--hostname", node_name or "lab@%h", "--loglevel", loglevel,
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def worker_command(
    pool: str,
    concurrency: int | None = None,
    node_name: str | None = None,
    loglevel: str = "INFO",
) -> list[str]:
    """The argv that starts one worker process for `pool` ("lab" for the lab worker)."""
    if pool == "lab":
        return lab_command(node_name, loglevel)
    profile = POOLS[pool]
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "--pool",
        profile.celery_pool,
        "--concurrency",
        str(concurrency or profile.concurrency),
        "--queues",
        profile.queue,
        "--hostname",
        node_name or f"{pool}@%h",
        "--loglevel",
        loglevel,
        # Mingle and gossip make every worker talk to every other at start and all along;
        # jobrunner needs neither (jobs are independent, GET /pools asks on demand).
        "--without-mingle",
        "--without-gossip",
    ]
