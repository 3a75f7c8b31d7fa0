"""The actors Dramatiq's worker runs: the Redis broker with its default middleware, plus
the Results middleware on a Redis backend (what a user who reads results adds; actors
say `store_results=True`). The URL of this peer's own Redis is the only other setting."""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

URL = os.environ["PEER_REDIS_URL"]
backend = RedisBackend(url=URL)
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def noop(value: object) -> object:
    return value


@dramatiq.actor(store_results=True)
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
