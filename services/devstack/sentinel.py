"""A Redis primary, its replicas and the Sentinels watching them, as processes of this
machine: for the failover fault test (tests/faults/test_sentinel_failover.py), the bench,
and trying a sentinel:// REDIS_URL by hand.

Every data node is a `RedisServer` (services/devstack/redis_server.py), made a replica
with REPLICAOF once it answers; every sentinel is `redis-server sentinel.conf --sentinel`
(the same binary: Debian's redis-server has Sentinel built in), each with a config file of
its own, which it rewrites as it learns the group. Nothing here decides anything: which
node is the primary is always asked of the sentinels.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import redis

from services.devstack.processes import die_with_launcher
from services.devstack.redis_server import RedisServer, free_port, redis_server_binary

T = TypeVar("T")
HOST = "127.0.0.1"
# "01 Dec 2026 05:08:36.811 # +switch-master <name> <old ip> <old port> <new ip> <new
# port>", as a sentinel logs a failover.
_SWITCH_MASTER = re.compile(
    r"(?P<at>\d\d \w{3} \d{4} [\d:.]+) # \+switch-master \S+ \S+ (?P<old>\d+) \S+ (?P<new>\d+)"
)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    """`check()`'s first truthy answer (a Redis error counts as none yet); TimeoutError
    naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = check()
            if answer:
                return answer
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        time.sleep(every)


def role(server: RedisServer) -> str | None:
    """What `server` says it is ("master" or "slave"), or None if it does not answer."""
    client = redis.Redis(HOST, server.port, socket_timeout=1, socket_connect_timeout=0.5)
    try:
        return str(client.info("replication")["role"])
    except redis.RedisError:
        return None
    finally:
        client.close()


@dataclass
class Sentinel:
    """One `redis-server --sentinel` process, with its config file and log in `folder`."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self, config: str, timeout: float = 10.0) -> Sentinel:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind {HOST}\ndir {self.folder}\n"
            f"logfile {self.folder / 'sentinel.log'}\n{config}"
        )
        # Its own session and death with its launcher, as RedisServer's (see there).
        self.process = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_launcher(signal.SIGTERM),
        )  # fmt: skip
        wait_for(lambda: self.client().ping(), timeout, f"sentinel on port {self.port} up")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(HOST, self.port, socket_timeout=1, socket_connect_timeout=0.5)

    def master(self, name: str) -> dict:
        """SENTINEL MASTER `name`: what this sentinel knows of it (address, flags, how
        many replicas and other sentinels it sees)."""
        client = self.client()
        try:
            return client.sentinel_master(name)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class SentinelGroup:
    """A primary, `replicas` replicas of it and `sentinels` sentinels watching them under
    `master_name`, with a quorum of `quorum`; all in `folder`.

    `down_after_ms` is Sentinel's down-after-milliseconds (how long a silent primary is
    given before it is held down) and `failover_timeout_ms` its failover-timeout: with the
    election between them, they bound how long there is no primary.
    """

    def __init__(
        self,
        folder: Path,
        replicas: int = 2,
        sentinels: int = 3,
        master_name: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 1_000,
        failover_timeout_ms: int = 5_000,
        fsync: str = "always",
    ) -> None:
        self.folder = Path(folder)
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers = [
            RedisServer(self.folder / f"redis-{i}", fsync=fsync) for i in range(1 + replicas)
        ]
        self.sentinels = [
            Sentinel(self.folder / f"sentinel-{i}", free_port()) for i in range(sentinels)
        ]

    @property
    def url(self) -> str:
        """REDIS_URL for this group, as Celery and kombu spell it."""
        return ";".join(f"sentinel://{HOST}:{s.port}/0" for s in self.sentinels)

    def start(self, timeout: float = 30.0, watched: bool = True) -> SentinelGroup:
        """Every node and sentinel, once each replica is in sync and every sentinel
        answers; and, if `watched`, once each sees the whole group (`wait_watched`).
        Clients work as soon as it returns: each sentinel names the primary from the
        start."""
        primary, *replicas = self.servers
        for server in self.servers:
            server.start()
        for replica in replicas:
            client = redis.Redis(HOST, replica.port, socket_timeout=2)
            client.replicaof(HOST, primary.port)
            client.close()
        for replica in replicas:
            wait_for(lambda r=replica: self._in_sync(r), timeout, f"replica {replica.port} in sync")
        config = (
            f"sentinel monitor {self.master_name} {HOST} {primary.port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.master_name} {len(replicas)}\n"
        )
        for sentinel in self.sentinels:
            sentinel.start(config)
        if watched:
            self.wait_watched(timeout)
        return self

    def wait_watched(self, timeout: float = 30.0) -> None:
        """Until each sentinel sees the replicas and the other sentinels (they find each
        other through the primary, every 2 s): only then can they agree on a failover."""
        for sentinel in self.sentinels:
            wait_for(
                lambda s=sentinel: self._sees_all(s), timeout,
                f"sentinel {sentinel.port} seeing the whole group",
            )  # fmt: skip

    @staticmethod
    def _in_sync(replica: RedisServer) -> bool:
        client = redis.Redis(HOST, replica.port, socket_timeout=1)
        try:
            return client.info("replication").get("master_link_status") == "up"
        finally:
            client.close()

    def _sees_all(self, sentinel: Sentinel) -> bool:
        state = sentinel.master(self.master_name)
        return (
            int(state["num-slaves"]) == len(self.servers) - 1
            and int(state["num-other-sentinels"]) == len(self.sentinels) - 1
        )

    # -- who is who, as the sentinels say ------------------------------------------------

    def master_port(self) -> int | None:
        """The primary's port as most sentinels name it, or None with no majority."""
        ports: list[int] = []
        for sentinel in self.sentinels:
            if sentinel.process is None or sentinel.process.poll() is not None:
                continue
            try:
                ports.append(int(sentinel.master(self.master_name)["port"]))
            except redis.RedisError:
                continue
        best = max(set(ports), key=ports.count, default=None)
        return best if best is not None and ports.count(best) > len(self.sentinels) // 2 else None

    def failovers(self) -> list[tuple[int, int]]:
        """Each failover the sentinels made, oldest first, as (old port, new port): from
        the `+switch-master` lines of their logs, which every sentinel writes once it
        takes the new configuration; a failover is listed once, at its first line."""
        first_seen: dict[tuple[int, int], datetime] = {}
        for sentinel in self.sentinels:
            log = sentinel.folder / "sentinel.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            for match in _SWITCH_MASTER.finditer(text):
                switch = (int(match["old"]), int(match["new"]))
                at = datetime.strptime(match["at"], "%d %b %Y %H:%M:%S.%f")
                first_seen[switch] = min(at, first_seen.get(switch, at))
        return sorted(first_seen, key=first_seen.__getitem__)

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def primary(self) -> RedisServer:
        port = self.master_port()
        if port is None:
            raise RuntimeError("the sentinels do not agree on a primary")
        return self.server_on(port)

    def replicas(self) -> list[RedisServer]:
        """The running nodes that are not the primary."""
        primary = self.primary()
        return [s for s in self.servers if s is not primary and role(s) is not None]

    def wait_for_new_primary(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Until a majority of the sentinels name a node other than `old`, and that node
        says it is a master: the failover is done."""

        def elected() -> RedisServer | None:
            port = self.master_port()
            if port is None or port == old.port:
                return None
            new = self.server_on(port)
            return new if role(new) == "master" else None

        return wait_for(elected, timeout, f"a primary other than {old.port} elected")

    def stop(self) -> None:
        """The sentinels first (they would fail over the primary as it stops), then the
        data nodes."""
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
