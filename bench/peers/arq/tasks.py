"""The functions arq's worker runs: arq's defaults (a 0.5 s poll of the queue, results kept
an hour), with this peer's own Redis and the concurrency the figure asks for (`max_jobs`,
10 by default). Async functions, so a sleep is `asyncio.sleep`."""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

from arq.connections import RedisSettings


async def noop(ctx: dict[str, Any], value: object) -> object:
    return value


async def sleep(ctx: dict[str, Any], seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, sleep]
    redis_settings = RedisSettings.from_dsn(os.environ["PEER_REDIS_URL"])
    max_jobs = int(os.environ.get("PEER_CONCURRENCY", "10"))
