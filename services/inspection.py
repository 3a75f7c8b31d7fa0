"""Which workers are alive, per pool: Celery's own inspection, asked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

from services.pools import POOLS


@dataclass(frozen=True)
class LiveWorker:
    node: str
    pool: str
    concurrency: int
    pid: int | None
    max_rss_bytes: int | None  # of the worker's main process


def live_workers(celery: Celery, timeout: float = 1.0) -> dict[str, list[LiveWorker]]:
    """Workers that answered within `timeout`, grouped by the pool whose queue they
    consume (a worker on no pool queue, like the lab's, is left out)."""
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
