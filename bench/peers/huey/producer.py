"""Huey's side of the bench: a task call per job, or `task.map` (Huey's way to send many:
it still enqueues them one LPUSH at a time); results through `Result.get()`."""

from __future__ import annotations

from typing import Any

import huey as huey_package
import redis

from bench.peers.driver import MISSING, serve
from bench.peers.huey import tasks


class HueyProducer:
    poll_command = "hlen"
    bulk_path = "task.map(...)"

    def __init__(self, url: str) -> None:
        self.huey = tasks.huey
        self.before = 0

    def send(
        self, workload: str, args: list[Any], bulk: bool, options: dict[str, Any]
    ) -> list[Any]:
        task = getattr(tasks, workload)
        # Results land in one hash: count against what it held before this run.
        self.before = self.huey.storage.result_store_size()
        if bulk:
            return list(task.map([tuple(a) for a in args]))
        return [task(*a) for a in args]

    def result_keys(self, handles: list[Any]) -> list[str] | None:
        return None  # every result is a field of one hash: HLEN counts them

    def count_done(self, client: redis.Redis, handles: list[Any]) -> int:
        return int(client.hlen(self.huey.storage.result_key)) - self.before

    def results(self, handles: list[Any]) -> list[Any]:
        # Result.get() reads and deletes (Huey's default), which leaves the hash empty.
        values = [h.get() for h in handles]
        return [MISSING if v is None else v for v in values]


if __name__ == "__main__":
    serve(HueyProducer, {"library": "huey", "version": huey_package.__version__})
