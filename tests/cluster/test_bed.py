"""The multi-host test bed itself: hosts that reach each other only over the bed, each
with its own hostname; a cut that stalls traffic like a pulled cable and a heal that
lets it resume; a teardown that leaves no namespace and no process; a sweep of what a
killed run left behind."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.devstack.netns import Bed, namespaces, sweep
from services.devstack.redis_server import RedisServer
from tests.cluster.conftest import BED_HOSTS, BED_PREFIX, require_bed

# Generous bounds on waits that normally end at once: only a broken bed reaches them.
PATIENCE = 5.0
# How long a read waits during a cut before it is called stalled.
STALL = 0.5


@pytest.fixture(scope="module")
def bed_redis(bed: Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on host "redis", listening on its bed address only."""
    server = RedisServer(
        tmp_path_factory.mktemp("bed-redis"),
        fsync="everysec",
        bind=bed.address("redis"),
        command_prefix=bed.command_prefix("redis"),
        reach=bed.reach("redis"),
    ).start()
    yield server
    server.stop()


def running(pid: int) -> bool:
    """Whether `pid` is a live process (an exited one not yet reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def ping(sock: socket.socket) -> bytes:
    sock.sendall(b"PING\r\n")
    return sock.recv(100)


def test_hosts_reach_each_other_over_the_bed_and_nothing_else(
    bed: Bed, bed_redis: RedisServer
) -> None:
    assert bed_redis.process is not None
    assert bed_redis.process.pid in bed.pids("redis")
    assert bed_redis.process.pid not in bed.pids("api")

    def talk_to_redis() -> bytes | None:
        client = redis.Redis(host=bed.address("redis"), port=bed_redis.port, socket_timeout=2)
        try:
            client.set("from", "api")
            return client.get("from")
        finally:
            client.close()

    assert bed.reach("api")(talk_to_redis) == b"api"

    # The api host's loopback is its own: Redis is not there, only on the bed.
    def over_loopback() -> None:
        socket.create_connection(("127.0.0.1", bed_redis.port), timeout=2).close()

    with pytest.raises(ConnectionRefusedError):
        bed.reach("api")(over_loopback)

    # And a host has no route off the bed: nothing leaves for this machine's network.
    def off_the_bed() -> None:
        socket.create_connection(("192.0.2.1", 9), timeout=2).close()

    with pytest.raises(OSError) as unreachable:
        bed.reach("w1")(off_the_bed)
    assert unreachable.value.errno == errno.ENETUNREACH


def test_each_host_has_its_hostname_and_a_program_keeps_its_pid(bed: Bed) -> None:
    """Records and Celery node names tell hosts apart; the launcher signals the program
    itself, not a wrapper around it."""
    seen = {}
    for host in BED_HOSTS:
        program = subprocess.Popen(
            [*bed.command_prefix(host), "sh", "-c", 'echo "$(hostname) $$"'],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, _ = program.communicate(timeout=PATIENCE)
        name, pid = out.split()
        assert int(pid) == program.pid
        seen[host] = name
    assert seen == {host: host for host in BED_HOSTS}
    assert socket.gethostname() not in BED_HOSTS  # this machine's own name is untouched


def test_a_cut_stalls_traffic_and_a_heal_lets_it_resume(bed: Bed, bed_redis: RedisServer) -> None:
    redis_at = (bed.address("redis"), bed_redis.port)
    on_w1 = bed.reach("w1")(lambda: socket.create_connection(redis_at, timeout=STALL))
    on_w2 = bed.reach("w2")(lambda: socket.create_connection(redis_at, timeout=STALL))
    try:
        assert ping(on_w2) == b"+PONG\r\n"
        with bed.partitioned("w2"):
            assert bed.is_cut("w2")
            # A stall, not an error: the request is sent, nothing comes back...
            with pytest.raises(TimeoutError):
                ping(on_w2)
            # ...nor can w2 connect anew; while w1, not cut, still talks to Redis.
            with pytest.raises(TimeoutError):
                bed.reach("w2")(lambda: socket.create_connection(redis_at, timeout=STALL))
            assert ping(on_w1) == b"+PONG\r\n"
        assert not bed.is_cut("w2")
        # Healed: TCP retransmits the PING sent during the cut and its answer arrives on
        # the same connection, as after a real outage.
        on_w2.settimeout(PATIENCE)
        assert on_w2.recv(100) == b"+PONG\r\n"
        assert ping(on_w2) == b"+PONG\r\n"
    finally:
        on_w1.close()
        on_w2.close()


def test_a_cut_between_two_hosts_leaves_their_other_links_alone(
    bed: Bed, bed_redis: RedisServer
) -> None:
    """The API host cut from Redis while clients still reach the API: only the link
    between the two hosts is lost, and it stalls like a full cut."""
    redis_at = (bed.address("redis"), bed_redis.port)
    listening_on_api = bed.reach("api")(lambda: socket.create_server((bed.address("api"), 0)))
    api_at = listening_on_api.getsockname()
    connect = lambda host, to: bed.reach(host)(  # noqa: E731
        lambda: socket.create_connection(to, timeout=STALL).close()
    )
    try:
        with bed.partitioned("api", "redis"):
            assert bed.is_cut("redis", "api") and not bed.is_cut("api")
            with pytest.raises(TimeoutError):
                connect("api", redis_at)
            connect("w1", api_at)  # clients still reach the API host
            connect("w1", redis_at)  # and Redis
        connect("api", redis_at)
    finally:
        listening_on_api.close()


def test_close_stops_every_process_on_the_bed_and_leaves_no_namespace() -> None:
    require_bed()
    bed = Bed(prefix="jrtclose", hosts=["a", "b"]).open()
    ignores_term = 'trap "" TERM; sleep 60 & echo $!; wait'
    leaves_a_daemon = "setsid sleep 60 >/dev/null 2>&1 & echo $!"
    started = [
        # A plain program.
        subprocess.Popen([*bed.command_prefix("a"), "sleep", "60"]),
        # One that ignores SIGTERM, with a child that does too: SIGKILL is needed.
        subprocess.Popen(
            [*bed.command_prefix("b"), "sh", "-c", ignores_term], stdout=subprocess.PIPE, text=True
        ),
        # One that left a daemon behind, no child of ours.
        subprocess.Popen(
            [*bed.command_prefix("a"), "sh", "-c", leaves_a_daemon],
            stdout=subprocess.PIPE,
            text=True,
        ),
    ]
    ours = {program.pid for program in started[:2]}
    ours |= {int(program.stdout.readline()) for program in started[1:] if program.stdout}
    assert ours <= bed.pids("a") | bed.pids("b")

    stopped = bed.close(grace=0.3)
    for program in started:
        program.wait(timeout=PATIENCE)  # reaped: a zombie would not be "running" anyway

    assert ours <= stopped
    assert not [pid for pid in stopped if running(pid)]
    assert not {bed.switch, bed.namespace("a"), bed.namespace("b")} & set(namespaces())
    assert bed.close() == set()  # a second close is harmless


def test_sweep_removes_a_bed_left_by_a_killed_run_and_spares_a_live_one(bed: Bed) -> None:
    """A test run killed with its bed up leaves namespaces and processes behind; the next
    run's sweep removes them, and never the bed of a run still going (this one's)."""
    crashing_run = textwrap.dedent(
        """
        import subprocess, time
        from services.devstack.netns import Bed
        bed = Bed(prefix="jrtsweep", hosts=["a", "b"]).open()
        program = subprocess.Popen([*bed.command_prefix("a"), "sleep", "60"])
        print(program.pid, flush=True)
        time.sleep(60)
        """
    )
    run = subprocess.Popen([sys.executable, "-c", crashing_run], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(3 * PATIENCE, run.kill)  # bounds the readline below
    watchdog.start()
    try:
        assert run.stdout is not None
        orphan = int(run.stdout.readline())
    finally:
        watchdog.cancel()
        run.kill()
        run.wait(timeout=PATIENCE)
    # Only that run's: another session on this machine may run this test meanwhile.
    left = {name for name in namespaces() if name.startswith(f"jrtsweep-{run.pid}-")}
    assert len(left) == 3  # a, b and the switch
    assert running(orphan)

    assert left <= set(sweep("jrtsweep"))
    assert not left & set(namespaces())
    assert not running(orphan)

    assert sweep(BED_PREFIX) == []
    assert {bed.namespace(host) for host in BED_HOSTS} <= set(namespaces())
