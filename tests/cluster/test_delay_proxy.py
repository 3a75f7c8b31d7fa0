"""The delaying TCP forwarder (services/devstack/delay_proxy.py), in front of a real
redis-server: a round trip grows by twice the delay, a pipeline still costs about one
round trip, replies stay whole and in order, an end of file from either side closes
the pair, and the command-line proxy on the test bed delays clients on other hosts.

Only the last test needs the bed (root); the others run on loopback anywhere.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from services.devstack.compose import PROJECT_ROOT
from services.devstack.delay_proxy import DelayProxy
from services.devstack.netns import Bed
from services.devstack.redis_server import RedisServer

# Generous bounds on waits that normally end at once: only a broken proxy reaches them.
PATIENCE = 5.0
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("proxied-redis"), fsync="everysec").start()
    yield server
    server.stop()


def proxy_to(server: RedisServer, delay_ms: float) -> DelayProxy:
    return DelayProxy((LOOPBACK, 0), (LOOPBACK, server.port), delay_ms)


def client_of(proxy: DelayProxy) -> redis.Redis:
    assert proxy.address is not None
    host, port = proxy.address
    return redis.Redis(host=host, port=port, socket_timeout=PATIENCE)


def median_rtt_ms(client: redis.Redis, pings: int) -> float:
    """The median time of one PING, in ms, on a connection already open."""
    client.ping()
    times = []
    for _ in range(pings):
        start = time.perf_counter()
        client.ping()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@pytest.mark.timed  # sub-millisecond medians: run alone, not beside a loaded neighbour
def test_a_round_trip_grows_by_twice_the_delay(redis_server: RedisServer) -> None:
    delays = (0.0, 1.0, 5.0)
    rtt = {}
    for delay in delays:
        with proxy_to(redis_server, delay) as proxy:
            client = client_of(proxy)
            rtt[delay] = median_rtt_ms(client, pings=40)
            client.close()
    for delay in delays:
        assert rtt[delay] >= 2 * delay, rtt  # each way, never less than asked
    # What the delay adds is in proportion to it (5 ms adds 5 x what 1 ms adds), give or
    # take the event loop's timer resolution (about 0.1 ms each way here).
    added = {delay: rtt[delay] - rtt[0.0] for delay in delays}
    assert 0.7 <= (added[5.0] / added[1.0]) / 5 <= 1.1, rtt


def test_a_pipeline_through_a_delayed_proxy_costs_about_one_round_trip(
    redis_server: RedisServer,
) -> None:
    """1000 pipelined commands (about 220 kB each way, many chunks) cost about one round
    trip: chunks are held side by side, not one after another."""
    commands = 1000
    payloads = [f"{i}:".encode() + b"x" * 200 for i in range(commands)]
    with proxy_to(redis_server, delay_ms=20) as proxy:
        client = client_of(proxy)
        single = median_rtt_ms(client, pings=5)
        pipelined = []
        for _ in range(3):
            pipeline = client.pipeline(transaction=False)
            for payload in payloads:
                pipeline.echo(payload)
            start = time.perf_counter()
            replies = pipeline.execute()
            pipelined.append((time.perf_counter() - start) * 1000)
            assert replies == payloads  # whole and in order
        client.close()
    # Best of three: the cost of the mechanism, not of whatever else the machine ran.
    assert min(pipelined) / single < 2, (single, pipelined)


def test_connections_through_the_proxy_keep_their_own_replies_in_order(
    redis_server: RedisServer,
) -> None:
    with proxy_to(redis_server, delay_ms=1) as proxy:

        def conversation(name: str) -> tuple[list[bytes], bool]:
            client = client_of(proxy)
            try:
                said = [f"{name}:{i}".encode() for i in range(30)]
                heard = [client.echo(line) for line in said]
                big = name.encode() * (1_000_000 // len(name))
                client.set(name, big)
                return [h for h, s in zip(heard, said, strict=True) if h != s], (
                    client.get(name) == big
                )
            finally:
                client.close()

        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(conversation, [f"client{n}" for n in range(6)]))
    assert results == [([], True)] * 6


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_an_end_of_file_from_either_side_closes_the_pair(redis_server: RedisServer) -> None:
    admin = redis.Redis(port=redis_server.port)
    named = lambda name: [c for c in admin.client_list() if c["name"] == name]  # noqa: E731
    with proxy_to(redis_server, delay_ms=1) as proxy:
        assert proxy.address is not None
        # The client leaves: the proxy's connection to Redis goes too.
        leaving = socket.create_connection(proxy.address, timeout=PATIENCE)
        leaving.sendall(b"CLIENT SETNAME leaving\r\n")
        assert leaving.recv(100) == b"+OK\r\n"
        assert named("leaving")
        leaving.close()
        assert wait_until(lambda: not named("leaving"))

        # Redis drops the connection: the client sees its end.
        dropped = socket.create_connection(proxy.address, timeout=PATIENCE)
        dropped.sendall(b"CLIENT SETNAME dropped\r\n")
        assert dropped.recv(100) == b"+OK\r\n"
        admin.client_kill_filter(_id=named("dropped")[0]["id"])
        assert dropped.recv(100) == b""
        dropped.close()
        assert wait_until(lambda: not proxy.pairs)
    admin.close()


def start_command_line_proxy(
    argv_prefix: list[str], listen: str, to: str, delay_ms: str
) -> tuple[subprocess.Popen[str], str]:
    """`python -m services.devstack.delay_proxy`, and the line it says once listening."""
    program = subprocess.Popen(
        [*argv_prefix, sys.executable, "-m", "services.devstack.delay_proxy",
         "--listen", listen, "--to", to, "--delay-ms", delay_ms],
        stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT,
    )  # fmt: skip
    watchdog = threading.Timer(PATIENCE, program.kill)  # bounds the readline
    watchdog.start()
    try:
        assert program.stdout is not None
        line = program.stdout.readline()
    finally:
        watchdog.cancel()
    assert "listening on" in line, line
    return program, line


def test_the_command_line_proxy_takes_a_fractional_delay_and_stops_on_sigterm(
    redis_server: RedisServer,
) -> None:
    program, line = start_command_line_proxy(
        [], f"{LOOPBACK}:0", f"{LOOPBACK}:{redis_server.port}", "0.5"
    )
    try:
        port = int(line.split("listening on ")[1].split(",")[0].rpartition(":")[2])
        client = redis.Redis(port=port, socket_timeout=PATIENCE)
        assert median_rtt_ms(client, pings=10) >= 1.0
        client.close()
        # Stopped with a connection open: it neither hangs nor fails, and the connection
        # is closed (reset: what it held is dropped).
        open_one = socket.create_connection((LOOPBACK, port), timeout=PATIENCE)
        open_one.sendall(b"PING\r\n")
        assert open_one.recv(100) == b"+PONG\r\n"
        program.send_signal(signal.SIGTERM)
        assert program.wait(timeout=PATIENCE) == 0
        with contextlib.suppress(ConnectionResetError):
            assert open_one.recv(100) == b""
        open_one.close()
    finally:
        program.kill()
        program.wait(timeout=PATIENCE)


def test_a_proxy_on_the_redis_host_delays_clients_on_other_hosts(
    bed: Bed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """How the cluster tests add latency: Redis on its host's loopback, the proxy on the
    host's bed address in front of it, clients on other hosts."""
    server = RedisServer(
        tmp_path_factory.mktemp("bed-redis"),
        fsync="everysec",
        command_prefix=bed.command_prefix("redis"),
        reach=bed.reach("redis"),
    ).start()
    program, _ = start_command_line_proxy(
        bed.command_prefix("redis"),
        f"{bed.address('redis')}:6380",
        f"{LOOPBACK}:{server.port}",
        "2",
    )
    try:

        def rtt_from_api() -> float:
            client = redis.Redis(host=bed.address("redis"), port=6380, socket_timeout=PATIENCE)
            try:
                return median_rtt_ms(client, pings=20)
            finally:
                client.close()

        assert bed.reach("api")(rtt_from_api) >= 4.0
        # Redis itself is on the redis host's loopback: the proxy is the only way in.
        with pytest.raises(ConnectionRefusedError):
            bed.reach("api")(
                lambda: socket.create_connection((bed.address("redis"), server.port), 2)
            )
    finally:
        program.send_signal(signal.SIGTERM)
        stopped = program.wait(timeout=PATIENCE)
        server.stop()
    assert stopped == 0
