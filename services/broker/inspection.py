"""Which workers are alive, per pool: Celery's own inspection, asked once; and which of
them run on this host."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil
from celery import Celery
from celery.utils.nodenames import default_nodename, host_format

from services.catalog.pools import POOLS


@dataclass(frozen=True)
class LiveWorker:
    node: str
    pool: str
    concurrency: int
    pid: int | None
    max_rss_bytes: int | None  # lifetime peak of the worker's main process, as Celery says


def live_workers(celery: Celery, timeout: float = 1.0) -> dict[str, list[LiveWorker]]:
    """Workers that answered within `timeout`, grouped by the pool whose queue they
    consume (a worker on no pool queue, like the experiment runner, is left out)."""
    inspect = celery.control.inspect(timeout=timeout)
    queues: dict[str, Any] = inspect.active_queues() or {}
    stats: dict[str, Any] = inspect.stats() or {}
    by_queue = {p.queue: p.name for p in POOLS.values()}
    found: dict[str, list[LiveWorker]] = {name: [] for name in POOLS}
    for node, consumed in sorted(queues.items()):
        node_stats = stats.get(node, {})
        rusage = node_stats.get("rusage")
        for queue in consumed:
            pool = by_queue.get(queue.get("name"))
            if pool:
                found[pool].append(
                    LiveWorker(
                        node=node,
                        pool=pool,
                        concurrency=node_stats.get("pool", {}).get("max-concurrency", 1),
                        pid=node_stats.get("pid"),
                        # Linux reports ru_maxrss in KiB.
                        max_rss_bytes=rusage["maxrss"] * 1024 if isinstance(rusage, dict) else None,
                    )
                )
    return found


def local_pid(node: str, pid: int | None) -> int | None:
    """`pid` if the worker `node` is that process on this host, else None.

    A worker elsewhere (another machine, another container) reports a pid that means
    nothing here, or names another process: the process's own command line must name the
    node, as `celery worker --hostname` does.
    """
    if pid is None:
        return None
    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return pid if node in node_names(argv) else None


def node_names(argv: list[str]) -> set[str]:
    """The node names a `celery worker` command line gives, expanded as Celery expands
    them (`gevent-1@%h` -> `gevent-1@thishost`)."""
    given = []
    for index, arg in enumerate(argv):
        if arg in ("-n", "--hostname") and index + 1 < len(argv):
            given.append(argv[index + 1])
        elif arg.startswith("--hostname="):
            given.append(arg.partition("=")[2])
    return {host_format(default_nodename(name)) for name in given}
