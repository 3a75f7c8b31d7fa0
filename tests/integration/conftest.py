"""Fixtures of the integration tests: a private Redis of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devstack.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped after it."""
    srv = RedisServer(tmp_path / "redis").start()
    try:
        yield srv
    finally:
        srv.stop()
