"""The tasks Taskiq's worker runs: taskiq-redis's README setup (RedisStreamBroker, the
broker with acknowledgements, and RedisAsyncResultBackend), with this peer's own Redis
and the result expiry that README asks every user to set. Async tasks, so a sleep is
`asyncio.sleep`: a blocking one would hold the worker's one event loop."""

from __future__ import annotations

import asyncio
import os

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

URL = os.environ["PEER_REDIS_URL"]
result_backend = RedisAsyncResultBackend(redis_url=URL, result_ex_time=3600)
broker = RedisStreamBroker(url=URL).with_result_backend(result_backend)


@broker.task(task_name="noop")
async def noop(value: object) -> object:
    return value


@broker.task(task_name="sleep")
async def sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds
