"""The jobs Huey's consumer runs: Huey's defaults (RedisHuey: a blocking BRPOP on the
queue, results in one Redis hash), with the URL of this peer's own Redis as the only
setting."""

from __future__ import annotations

import os
import time

from huey import RedisHuey

huey = RedisHuey("bench", url=os.environ["PEER_REDIS_URL"])


@huey.task()
def noop(value: object) -> object:
    return value


@huey.task()
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
