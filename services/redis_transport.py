"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's `Channel.conn_or_acquire` builds a new `redis.Redis` for every publish,
acknowledgement and unacked-bookkeeping call, and redis-py builds its ~165-entry,
case-insensitive response-callback table in every constructor (redis/redis-py#3624, fix
proposed in redis/redis-py#4124). Profiled with py-spy (`--gil`) in a threads worker running
no-op jobs, those constructors were 18 % of the time the worker held the GIL.

A `redis.Redis` over a connection pool is safe to share between threads and greenlets:
every command checks a connection out of the pool and returns it. So a channel keeps one,
made again whenever kombu replaces the pool (after a lost connection, say). Everything else
is kombu's own transport, unchanged: same keys, same messages, same guarantees. The API
(sending) and the workers (consuming) both use it through `broker_transport`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis

# What `broker_transport` names; kombu resolves "module:Class" paths itself.
TRANSPORT_PATH = "services.redis_transport:Transport"


class Channel(kombu_redis.Channel):
    _shared_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
