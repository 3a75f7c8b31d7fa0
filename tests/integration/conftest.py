"""Fixtures of the integration tests: a private Redis of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.devstack.delay_proxy import DelayProxy
from services.devstack.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped after it."""
    srv = RedisServer(tmp_path / "redis").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for a module's tests."""
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def far_redis(module_server: RedisServer) -> Iterator[redis.Redis]:
    """The module's server, emptied and its command counts reset, 2 ms away each way
    (services/devstack/delay_proxy.py): a round trip long enough for writes sent at once
    to pile up behind one another."""
    with DelayProxy(("127.0.0.1", 0), ("127.0.0.1", module_server.port), delay_ms=2) as proxy:
        host, port = proxy.address
        client = redis.Redis(host=host, port=port, decode_responses=True)
        client.flushall()
        client.config_resetstat()
        try:
            yield client
        finally:
            client.close()
