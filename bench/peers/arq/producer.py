"""arq's side of the bench: `await redis.enqueue_job(...)` per job, in one coroutine on one
event loop. arq has no bulk path. Results through `await job.result_info()`."""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

import redis
from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import result_key_prefix

from bench.peers.driver import MISSING, serve

READ_AT_ONCE = 200


class ArqProducer:
    poll_command = "exists"
    bulk_path = ""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(create_pool(RedisSettings.from_dsn(url)))

    def send(
        self, workload: str, args: list[Any], bulk: bool, options: dict[str, Any]
    ) -> list[Any]:
        async def enqueue_all() -> list[Any]:
            return [await self.pool.enqueue_job(workload, *a) for a in args]

        return self.loop.run_until_complete(enqueue_all())

    def result_keys(self, handles: list[Any]) -> list[str] | None:
        return [result_key_prefix + job.job_id for job in handles]

    def count_done(self, client: redis.Redis, handles: list[Any]) -> int:
        raise NotImplementedError

    def results(self, handles: list[Any]) -> list[Any]:
        async def one(job: Any) -> Any:
            info = await job.result_info()
            return info.result if info is not None and info.success else MISSING

        async def all_of() -> list[Any]:
            values: list[Any] = []
            for start in range(0, len(handles), READ_AT_ONCE):
                values += await asyncio.gather(
                    *(one(j) for j in handles[start : start + READ_AT_ONCE])
                )
            return values

        return self.loop.run_until_complete(all_of())


if __name__ == "__main__":
    serve(ArqProducer, {"library": "arq", "version": version("arq")})
