"""Shared fixtures: one real stack (Redis, API, a worker per pool) for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack import Stack

# Concurrency of the test workers: prefork at 2 to match the 2 cores CI has.
TEST_CONCURRENCY = {"threads": 8, "prefork": 2, "gevent": 50}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stack"))
    try:
        stack.start_redis()
        stack.start_api()
        for pool, concurrency in TEST_CONCURRENCY.items():
            stack.start_worker(pool, concurrency)
        stack.start_worker("experiments")
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()
