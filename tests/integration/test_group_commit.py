"""Group commit on a real Redis: writes that arrive while a batch is on its way share the
next round trip, each gets its own answer, and nothing waits when nothing else does."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.devstack.delay_proxy import DelayProxy
from services.devstack.redis_server import RedisServer
from services.jobs.group_commit import GroupCommit

# Answers its key's new value, or fails with Redis's error when ARGV[1] is not a number.
INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(Path(tmp_path_factory.mktemp("group-commit"))).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def far_redis(server: RedisServer) -> Iterator[redis.Redis]:
    """The server 2 ms away each way: a round trip long enough for writes to pile up."""
    with DelayProxy(("127.0.0.1", 0), ("127.0.0.1", server.port), delay_ms=2) as proxy:
        host, port = proxy.address
        client = redis.Redis(host=host, port=port, decode_responses=True)
        yield client
        client.close()


def test_writes_arriving_together_share_round_trips_and_get_their_own_answers(
    far_redis: redis.Redis,
) -> None:
    group = GroupCommit(far_redis)
    script = far_redis.register_script(INCR_BY)
    answers: dict[int, int] = {}
    start = threading.Barrier(40)

    def write(n: int) -> None:
        start.wait()
        answers[n] = group.run(script, [f"gc:{n}"], [n])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == {n: n for n in range(40)}  # each its own key's value
    assert group.writes == 40
    # Forty writes in far fewer round trips: the first alone, the rest together.
    assert group.batches <= 40 / 4, group.batches


def test_a_lone_write_is_sent_at_once_in_a_batch_of_its_own(far_redis: redis.Redis) -> None:
    group = GroupCommit(far_redis)
    script = far_redis.register_script(INCR_BY)
    for n in range(5):
        assert group.run(script, ["gc:lone"], [1]) == n + 1
    assert (group.batches, group.writes) == (5, 5)


def test_an_error_answers_only_its_own_write(far_redis: redis.Redis) -> None:
    group = GroupCommit(far_redis)
    script = far_redis.register_script(INCR_BY)
    outcomes: dict[str, object] = {}
    start = threading.Barrier(3)

    def write(name: str, by: object) -> None:
        start.wait()
        try:
            outcomes[name] = group.run(script, [f"gc:err:{name}"], [by])
        except redis.ResponseError as exc:
            outcomes[name] = exc

    threads = [
        threading.Thread(target=write, args=args)
        for args in (("good", 3), ("bad", "three"), ("also-good", 4))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes["good"] == 3 and outcomes["also-good"] == 4
    assert isinstance(outcomes["bad"], redis.ResponseError)


def test_a_script_redis_forgot_is_loaded_again(far_redis: redis.Redis) -> None:
    group = GroupCommit(far_redis)
    script = far_redis.register_script(INCR_BY)
    assert group.run(script, ["gc:flush"], [1]) == 1
    far_redis.script_flush()  # what a Redis restart does to loaded scripts
    assert group.run(script, ["gc:flush"], [1]) == 2
