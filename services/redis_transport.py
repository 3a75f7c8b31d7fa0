"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's `Channel.conn_or_acquire` builds a new `redis.Redis` for every publish,
acknowledgement and unacked-bookkeeping call, and redis-py builds its ~165-entry,
case-insensitive response-callback table in every constructor (redis/redis-py#3624, fix
proposed in redis/redis-py#4124). Profiled with py-spy (`--gil`) in a threads worker running
no-op jobs, those constructors were 18 % of the time the worker held the GIL.

A `redis.Redis` over a connection pool is safe to share between threads and greenlets:
every command checks a connection out of the pool and returns it. So a channel keeps one,
made again whenever kombu replaces the pool (after a lost connection, say).

A channel can also hand back what it would have pushed (`collecting`), so that
services.messages can let Celery and kombu build a message once and then write it into
the same Redis transaction as the job's record. Its unacked bookkeeping is
services/redis_qos.py: fewer round trips per message. Everything else is kombu's own transport,
unchanged: same keys, same messages, same guarantees. The API (sending) and the workers
(consuming) both use it through `broker_transport`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from services.redis_qos import QoS

# What `broker_transport` names; kombu resolves "module:Class" paths itself.
TRANSPORT_PATH = "services.redis_transport:Transport"


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: redis.Redis | None = None
    _collected: list[tuple[str, str]] | None = None

    @contextmanager
    def collecting(self) -> Iterator[list[tuple[str, str]]]:
        """Messages published meanwhile are not pushed but listed, as (Redis list key,
        payload): exactly what kombu would have LPUSHed."""
        self._collected = collected = []
        try:
            yield collected
        finally:
            self._collected = None

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if self._collected is None:
            return super()._put(queue, message, **kwargs)
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        self._collected.append((key, dumps(message)))
        return None

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
