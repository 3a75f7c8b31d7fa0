"""How each pool's worker is started: the `celery worker` command line of every profile.

The declarative half (queue, concurrency, capabilities) is `services.pools.PoolProfile`;
this adds what only the worker process needs. One function builds the command, so the
compose file, the local runner and the tests start workers the same way.
"""

from __future__ import annotations

import sys

from services.pools import POOLS


def worker_command(
    pool: str,
    concurrency: int | None = None,
    node_name: str | None = None,
    loglevel: str = "INFO",
) -> list[str]:
    """The argv that starts one worker process for `pool`."""
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
