"""The one place jobrunner builds a Redis client (the broker's connections are kombu's,
configured to match in services/broker/celery_app.py).

The API, the workers' job stores and the lab all come through `redis_client`, so how a
client connects — its timeouts, its health checks, its pool, how it decodes — is decided
here, once. Every client has a read timeout, a connect timeout and a health check: without
them a connection whose peer vanished (a cut network, a host gone) blocks its caller until
the kernel gives up on TCP, many seconds or never.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

import redis

from services.core.settings import Settings, get_settings


def tls_options(url: str, settings: Settings) -> dict[str, Any]:
    """redis-py's TLS options for a rediss:// URL (empty for redis://): the server's
    certificate checked against REDIS_TLS_CA_FILE and the URL's host, and this client's
    own certificate when one is set. kombu takes the same keys (broker_use_ssl)."""
    if urlsplit(url).scheme != "rediss":
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
    if settings.redis_tls_key_file:
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options


def redis_client(
    url: str,
    *,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    max_connections: int | None = None,
    wait_for_connection: float | None = None,
    settings: Settings | None = None,
) -> redis.Redis:
    """A client of the Redis at `url` that answers `str`.

    `timeout` bounds each reply and `connect_timeout` each connect (None: REDIS_SOCKET_TIMEOUT
    and REDIS_CONNECT_TIMEOUT); an idle connection is checked every
    REDIS_HEALTH_CHECK_INTERVAL seconds before use. The three are read from `settings`
    (else the process's own). With `max_connections`, the client's
    pool is bounded and a caller past the bound waits up to `wait_for_connection` seconds
    for a connection instead of failing: a gevent worker's hundreds of greenlets share a
    few dozen, each held for one round trip.
    """
    settings = settings or get_settings()
    options = {
        "decode_responses": True,
        "socket_timeout": timeout or settings.redis_socket_timeout,
        "socket_connect_timeout": connect_timeout or settings.redis_connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": settings.redis_health_check_interval,
        **tls_options(url, settings),
    }
    if max_connections is None:
        return redis.Redis.from_url(url, **options)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=wait_for_connection, **options
    )
    return redis.Redis(connection_pool=pool)


def storage_refusal(exc: BaseException | None) -> Literal["memory", "disk"] | None:
    """Why Redis refused a write while up: it reached `maxmemory` with `noeviction`
    ("memory"), or it could not write its append-only file, its disk full ("disk": the
    MISCONF error). Nothing of that command, script or MULTI was written, and reads still
    work; None for any other error."""
    # redis-py raises OutOfMemoryError for a command; inside a script or a MULTI the
    # refusal reaches it as another ResponseError, worded by Redis; kombu wraps either in
    # its OperationalError (the cause kept).
    while exc is not None:
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or (
            isinstance(exc, redis.ResponseError) and "> 'maxmemory'" in str(exc)
        ):
            return "memory"
        if isinstance(exc, redis.ResponseError) and "MISCONF" in str(exc):
            return "disk"
        exc = exc.__cause__ or exc.__context__
    return None
