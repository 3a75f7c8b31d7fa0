"""The one place jobrunner builds a Redis client (the broker's connections are kombu's).

The API, the workers' job stores and the lab all come through `redis_client`, so how a
client connects — its timeouts, its pool, how it decodes — is decided here, once.
"""

from __future__ import annotations

import redis


def redis_client(
    url: str,
    *,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    max_connections: int | None = None,
    wait_for_connection: float | None = None,
) -> redis.Redis:
    """A client of the Redis at `url` that answers `str`.

    `timeout` bounds each reply and `connect_timeout` each connect (None: redis-py's own
    default). With `max_connections`, the client's pool is bounded and
    a caller past the bound waits up to `wait_for_connection` seconds for a connection
    instead of failing: a gevent worker's hundreds of greenlets share a few dozen, each
    held for one round trip.
    """
    options = {
        name: value
        for name, value in (
            ("socket_timeout", timeout),
            ("socket_connect_timeout", connect_timeout),
        )
        if value is not None
    }
    if max_connections is None:
        return redis.Redis.from_url(url, decode_responses=True, **options)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        timeout=wait_for_connection,
        **options,
    )
    return redis.Redis(connection_pool=pool)
