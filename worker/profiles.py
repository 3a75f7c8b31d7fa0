"""How each pool's worker is started: the `celery worker` command line of every profile.

The declarative half (queue, concurrency, capabilities) is `PoolProfile` in
services/catalog/pools.py;
this adds what only the worker process needs. One function builds the command, so the
compose file, the local runner and the tests start workers the same way.
"""

from __future__ import annotations

import sys

from services.broker.celery_app import EXPERIMENT_QUEUE
from services.catalog.pools import POOLS
from services.core.settings import Settings, get_settings

# What `python -m worker --experiments` starts instead of a pool's worker.
EXPERIMENTS = "experiments"


def experiment_worker_command(node_name: str | None = None, loglevel: str = "INFO") -> list[str]:
    """The experiment worker: one experiment at a time (concurrency 1), so experiments
    never measure each other. A threads pool, so its executors may start processes."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--pool", "threads", "--concurrency", "1", "--queues", EXPERIMENT_QUEUE,
        "--hostname", node_name or f"{EXPERIMENTS}@%h", "--loglevel", loglevel,
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def worker_command(
    pool: str,
    concurrency: int | None = None,
    node_name: str | None = None,
    loglevel: str = "INFO",
    settings: Settings | None = None,
) -> list[str]:
    """The argv that starts one worker process for `pool` (EXPERIMENTS for the experiment
    worker)."""
    if pool == EXPERIMENTS:
        return experiment_worker_command(node_name, loglevel)
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
        *recycling(pool, settings or get_settings()),
    ]


def recycling(pool: str, settings: Settings) -> list[str]:
    """When a prefork pool process is replaced by a fresh one: after so many jobs, or
    once its resident memory is above a bound (checked after each job). Only prefork has
    pool processes to replace."""
    if POOLS[pool].celery_pool != "prefork":
        return []
    options = []
    if settings.worker_max_tasks_per_child_prefork:
        options += ["--max-tasks-per-child", str(settings.worker_max_tasks_per_child_prefork)]
    if settings.worker_max_memory_per_child_prefork:
        kib = settings.worker_max_memory_per_child_prefork * 1024  # Celery counts KiB
        options += ["--max-memory-per-child", str(kib)]
    return options
