"""Fixtures of the unit tests that need a Redis to count commands against: a private one
per module, nothing kept on disk."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.devstack.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), fsync="no").start()
    try:
        yield server.url
    finally:
        server.stop()
