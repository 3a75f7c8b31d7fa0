"""Taskiq's side of the bench: `await task.kiq(...)` per job, in one coroutine on one event
loop as an asyncio application sends them. Taskiq has no bulk path. Results through
`await handle.get_result()`."""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

import redis

from bench.peers.driver import MISSING, serve
from bench.peers.taskiq import tasks

# Results read at once (each its own GET on the backend's pool).
READ_AT_ONCE = 200


class TaskiqProducer:
    poll_command = "exists"
    bulk_path = ""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(tasks.broker.startup())

    def send(
        self, workload: str, args: list[Any], bulk: bool, options: dict[str, Any]
    ) -> list[Any]:
        task = getattr(tasks, workload)

        async def kiq_all() -> list[Any]:
            return [await task.kiq(*a) for a in args]

        return self.loop.run_until_complete(kiq_all())

    def result_keys(self, handles: list[Any]) -> list[str] | None:
        return [h.task_id for h in handles]  # the backend's key is the task id

    def count_done(self, client: redis.Redis, handles: list[Any]) -> int:
        raise NotImplementedError

    def results(self, handles: list[Any]) -> list[Any]:
        async def one(handle: Any) -> Any:
            result = await handle.get_result()
            return MISSING if result.is_err else result.return_value

        async def all_of() -> list[Any]:
            values: list[Any] = []
            for start in range(0, len(handles), READ_AT_ONCE):
                chunk = handles[start : start + READ_AT_ONCE]
                values += await asyncio.gather(*(one(h) for h in chunk))
            return values

        return self.loop.run_until_complete(all_of())


if __name__ == "__main__":
    serve(TaskiqProducer, {"library": "taskiq", "version": version("taskiq")})
