"""The one place jobrunner builds a Redis client (the broker's connections are kombu's,
configured to match in services/broker/celery_app.py).

The API, the workers' job stores and the lab all come through `redis_client`, so how a
client connects — its timeouts, its health checks, its pool, how it decodes — is decided
here, once. Every client has a read timeout, a connect timeout and a health check: without
them a connection whose peer vanished (a cut network, a host gone) blocks its caller until
the kernel gives up on TCP, many seconds or never.

REDIS_URL may also name Redis Sentinels, as Celery and kombu spell it
(`sentinel://host:26379/0;sentinel://host2:26379/0`, the master's name in
REDIS_SENTINEL_MASTER): a client then asks the sentinels where the master is before each
new connection, and follows a failover by itself (docs/high-availability.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import redis
import redis.sentinel

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
    if is_sentinel_url(url):
        return sentinel_master_client(
            url, settings.redis_sentinel_master, options, max_connections, wait_for_connection
        )
    if max_connections is None:
        return redis.Redis.from_url(url, **options)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=wait_for_connection, **options
    )
    return redis.Redis(connection_pool=pool)


SENTINEL_SCHEME = "sentinel"
# The port a sentinel listens on when its URL names none (Redis's and kombu's default).
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """A sentinel:// REDIS_URL taken apart: where the sentinels listen, and what the
    master asks of a client. As kombu reads it, the credentials and the database are the
    first URL's; they are the master's (the sentinels themselves are asked without)."""

    sentinels: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    db: int = 0


def is_sentinel_url(url: str) -> bool:
    """Whether `url` names sentinels (sentinel://…) rather than a Redis."""
    return urlsplit(url.strip()).scheme == SENTINEL_SCHEME


def sentinel_target(url: str) -> SentinelTarget:
    """The sentinels of `url` (`sentinel://[[user]:password@]host[:port][/db]`, several
    joined by `;`); ValueError, naming the part, for one that is not of that form."""
    parts = [part.strip() for part in url.split(";") if part.strip()]
    sentinels = []
    for part in parts:
        split = urlsplit(part)
        try:
            port = split.port or SENTINEL_PORT
        except ValueError:
            port = None
        if split.scheme != SENTINEL_SCHEME or not split.hostname or port is None:
            raise ValueError(
                f"REDIS_URL: {split.scheme}://{split.hostname or ''}… is not a sentinel "
                "(sentinel://[:PASSWORD@]HOST[:PORT][/DB], several joined by ';')"
            )
        sentinels.append((split.hostname, port))
    if not sentinels:
        raise ValueError("REDIS_URL: no sentinel named")
    first = urlsplit(parts[0])
    db = first.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"REDIS_URL: the database must be a number, not {db!r}")
    return SentinelTarget(
        sentinels=tuple(sentinels),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        db=int(db),
    )


class SentinelBlockingConnectionPool(
    redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool
):
    """redis-py's pool of connections to the master the sentinels name, bounded: past
    `max_connections` a caller waits `timeout` seconds for one (BlockingConnectionPool's
    rule) instead of failing. redis-py has none; the two classes compose, the sentinel
    one choosing where each connection goes, the blocking one how many there are."""


def sentinel_master_client(
    url: str,
    master: str,
    options: dict[str, Any],
    max_connections: int | None = None,
    wait_for_connection: float | None = None,
) -> redis.Redis:
    """A client of the master the sentinels of `url` watch under the name `master`.

    Each new connection asks the sentinels where the master is (the first one that
    answers with a master it holds up); a connection to a master that went away fails,
    one to a master demoted to a replica fails too (redis-py turns its READONLY into a
    ConnectionError and drops it), and the next one goes to the new master. A caller sees
    Redis errors only while no master is elected (Sentinel's down-after-milliseconds plus
    the election), as it would see them during a restart of a lone Redis.
    """
    target = sentinel_target(url)
    # The sentinels get the same timeouts: a sentinel on a host that vanished costs a
    # connect timeout, then the next is asked.
    asked = ("socket_timeout", "socket_connect_timeout", "socket_keepalive")
    sentinels = redis.sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs={key: options[key] for key in asked}
    )
    pool: dict[str, Any] = {}
    if max_connections is not None:
        pool = {
            "connection_pool_class": SentinelBlockingConnectionPool,
            "max_connections": max_connections,
            "timeout": wait_for_connection,
        }
    return sentinels.master_for(
        master, db=target.db, username=target.username, password=target.password,
        **options, **pool,
    )  # fmt: skip


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
