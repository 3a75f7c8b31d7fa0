"""A sentinel:// REDIS_URL, as Celery and kombu spell it: how it is read, and what the
broker and the Redis clients are built from it. No server is needed to build them (they
connect on first use); tests/faults/test_sentinel_failover.py runs them for real."""

from __future__ import annotations

import pytest
import redis.sentinel

from services.broker.celery_app import make_celery
from services.broker.transport import SENTINEL_TRANSPORT_PATH, SentinelTransport
from services.core.redis_clients import (
    SentinelBlockingConnectionPool,
    SentinelTarget,
    redis_client,
    sentinel_target,
)
from services.core.settings import Settings

URL = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2;sentinel://10.0.0.3:26380/2"


def test_a_sentinel_url_names_every_sentinel_and_the_masters_credentials() -> None:
    assert sentinel_target(URL) == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380)),
        username=None,
        password="s3cret",
        db=2,
    )
    assert sentinel_target("sentinel://u%40x:p%3Aw@h").username == "u@x"
    assert sentinel_target("sentinel://u%40x:p%3Aw@h").password == "p:w"


@pytest.mark.parametrize(
    "url",
    ["sentinel://h:26379;redis://h:6379", "sentinel://h:notaport", "sentinel://h/zero", ";"],
)
def test_a_bad_sentinel_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="REDIS_URL") as error:
        sentinel_target(url.replace("sentinel://", "sentinel://:pw@", 1))
    assert ":pw" not in str(error.value)


def test_the_broker_is_our_transport_on_one_sentinel_with_all_as_options() -> None:
    app = make_celery(Settings(redis_url=URL, redis_sentinel_master="jobs"))
    assert app.conf.broker_url == "sentinel://:s3cret@10.0.0.1:26379/2"
    assert app.conf.broker_transport == SENTINEL_TRANSPORT_PATH
    options = app.conf.broker_transport_options
    assert options["master_name"] == "jobs"
    assert options["sentinels"] == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380)]
    assert options["visibility_timeout"] == Settings().job_visibility_timeout


def test_a_connection_error_keeps_our_transport() -> None:
    """kombu moves to the next alternate URL on a connection error, parsing it again with
    kombu's own transport of the scheme: the broker URL must have none."""
    app = make_celery(Settings(redis_url=URL))
    with app.connection_for_write() as connection:
        assert connection.transport_cls == SENTINEL_TRANSPORT_PATH
        assert isinstance(connection.transport, SentinelTransport)
        connection.maybe_switch_next()  # what kombu does after a failed connect
        assert connection.transport_cls == SENTINEL_TRANSPORT_PATH
        assert isinstance(connection.transport, SentinelTransport)


def test_a_plain_url_keeps_the_plain_transport() -> None:
    app = make_celery(Settings(redis_url="redis://127.0.0.1:6379/0"))
    assert app.conf.broker_url == "redis://127.0.0.1:6379/0"
    assert "sentinels" not in app.conf.broker_transport_options


def test_clients_ask_the_sentinels_for_the_named_master() -> None:
    settings = Settings(redis_url=URL, redis_sentinel_master="jobs", redis_socket_timeout=3)
    client = redis_client(URL, settings=settings)
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "jobs" and pool.is_master
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "s3cret"
    assert pool.connection_kwargs["socket_timeout"] == 3
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [
        ("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380),
    ]  # fmt: skip
    assert all(s["socket_timeout"] == 3 and s.get("password") is None for s in sentinels)

    bounded = redis_client(URL, settings=settings, max_connections=4, wait_for_connection=7)
    assert isinstance(bounded.connection_pool, SentinelBlockingConnectionPool)
    assert (bounded.connection_pool.max_connections, bounded.connection_pool.timeout) == (4, 7)
