"""The stack a soak runs against: every process on this machine, or each component on a
host of the multi-host test bed (services/devstack/netns.py, Linux and root), where a
host's link can be cut too.

Both start the very processes `make run` and `make cluster` start, through the launcher,
with settings that make recovery quick: a lease (the visibility timeout) of a few
seconds, so a killed worker's jobs come back within the soak.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import redis

from services.core.api_keys import hash_key
from services.core.vocabulary import POOL_NAMES
from services.devstack.chaos.leaks import MARKER_VARIABLE
from services.devstack.cluster import Cluster
from services.devstack.launcher import Launcher
from services.devstack.netns import Bed, enter_namespace
from services.devstack.probes import pool_workers_probe
from services.devstack.processes import ManagedProcess
from services.devstack.redis_server import RedisServer, free_port

T = TypeVar("T")

# The API key's name: the soak's requests, and its Idempotency-Keys, are under it.
CLIENT_NAME = "chaos"
# Seconds a job's lease lasts and a lost worker's message waits before it is delivered
# again: short, so what a killed worker held runs again within the soak.
VISIBILITY_TIMEOUT = 4
CONCURRENCY = {"threads": 8, "prefork": 2, "gevent": 50}
BED_HOSTS = ["redis", "api", "w1", "w2"]
BED_PREFIX = "jrx"


def soak_settings(api_key: str, marker: str, cluster: bool) -> dict[str, str]:
    """The environment of every process of a soak's stack."""
    env = {
        "JOBRUNNER_API_KEYS": f"{CLIENT_NAME}:read+submit+admin:{hash_key(api_key)}",
        "JOB_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "JOB_MAX_TIME_LIMIT": str(VISIBILITY_TIMEOUT - 1),
        "JOB_SHUTDOWN_GRACE": "3",
        # Off: with Redis down the limiter, which counts in Redis, would answer first.
        "API_RATE_LIMIT": "0",
        MARKER_VARIABLE: marker,
        **{f"WORKER_CONCURRENCY_{p.upper()}": str(n) for p, n in CONCURRENCY.items()},
    }
    if cluster:
        # A cut link is noticed within seconds, not the defaults' tens.
        env |= {"REDIS_SOCKET_TIMEOUT": "3", "REDIS_HEALTH_CHECK_INTERVAL": "2"}
    return env


class Target:
    """What the soak needs of a stack; LocalTarget and BedTarget say how."""

    link_hosts: ClassVar[list[str]] = []
    api_url: str
    redis_url: str

    def launchers(self) -> list[tuple[str, Launcher]]:
        raise NotImplementedError

    def start(self, workers_per_pool: int) -> None:
        raise NotImplementedError

    def wait_ready(self, api_key: str, timeout: float) -> None:
        raise NotImplementedError

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` where the soak's client is (on the bed, the API's host)."""
        return fn()

    def enter_client_host(self) -> None:
        """Move the calling thread to where the soak's client is."""

    def cut(self, host: str) -> None:
        raise NotImplementedError

    def heal(self, host: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """After stop(): what is left of the stack (the bed's hosts)."""

    # -- shared ------------------------------------------------------------------------

    @property
    def workers(self) -> list[ManagedProcess]:
        return [w for _, launcher in self.launchers() for w in launcher.workers]

    @property
    def api(self) -> ManagedProcess:
        found = next((la.api for _, la in self.launchers() if la.api is not None), None)
        if found is None:
            raise RuntimeError("no API started")
        return found

    def started_redis(self) -> RedisServer | None:
        return next((la.redis_server for _, la in self.launchers() if la.redis_server), None)

    @property
    def redis_server(self) -> RedisServer:
        found = self.started_redis()
        if found is None:
            raise RuntimeError("no Redis started")
        return found

    @property
    def aof_dir(self) -> Path:
        return self.redis_server.data_dir / "appendonlydir"

    def processes(self) -> list[ManagedProcess]:
        return [p for _, launcher in self.launchers() for p in launcher.processes]

    def restart(self, managed: ManagedProcess) -> None:
        """Start a process that was killed again, as its supervisor would."""
        for _, launcher in self.launchers():
            if managed in launcher.processes:
                launcher.restart_dead(among=[managed])

    def supervise(self) -> list[tuple[str, int | None]]:
        """Start again every process that exited (compose's restart policy): their names
        and exit statuses."""
        restarted = []
        for _, launcher in self.launchers():
            for managed in launcher.restart_dead():
                restarted.append((managed.node or managed.name, managed.last_exit))
        return restarted

    def redis_client(self) -> redis.Redis:
        """A client of the stack's Redis, to be used through `call`."""
        return redis.Redis.from_url(
            self.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
        )

    def stop(self) -> None:
        """Workers and the API, then Redis, last."""
        for _, launcher in self.launchers():
            if launcher.redis_server is None:
                launcher.stop(grace=10)
        for _, launcher in self.launchers():
            if launcher.redis_server is not None:
                launcher.stop(grace=10)


class LocalTarget(Target):
    """Redis, the API and the workers as processes of this machine."""

    def __init__(self, folder: Path, overrides: dict[str, str]) -> None:
        self.port = free_port()
        self.launcher = Launcher(folder, overrides={**overrides, "API_HOST": "127.0.0.1"})
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.host = socket.gethostname()

    def launchers(self) -> list[tuple[str, Launcher]]:
        return [(self.host, self.launcher)]

    def start(self, workers_per_pool: int) -> None:
        self.launcher.start_redis()
        assert self.launcher.redis_url is not None
        self.redis_url = self.launcher.redis_url
        self.launcher.start_api("127.0.0.1", self.port)
        for pool in POOL_NAMES:
            for _ in range(workers_per_pool):
                self.launcher.start_worker(pool, CONCURRENCY[pool])

    def wait_ready(self, api_key: str, timeout: float) -> None:
        self.launcher.wait_api_ready(timeout)
        self.launcher.wait_workers_ready(pool_workers_probe(self.api_url, api_key), timeout)


class BedTarget(Target):
    """Redis, the API and two worker hosts, each a host of the test bed; a worker
    host's link can be cut."""

    link_hosts: ClassVar[list[str]] = ["w1", "w2"]

    def __init__(self, folder: Path, overrides: dict[str, str]) -> None:
        self.bed = Bed(prefix=BED_PREFIX, hosts=BED_HOSTS).open()
        self.cluster = Cluster(self.bed, folder, overrides)
        self.api_url = self.cluster.api_url
        self.redis_url = self.cluster.redis_url
        self._reach_api = self.bed.reach("api")

    def launchers(self) -> list[tuple[str, Launcher]]:
        return list(self.cluster.hosts.items())

    def start(self, workers_per_pool: int) -> None:
        self.cluster.start_redis()
        self.cluster.start_api()
        for host in self.link_hosts:
            for pool in POOL_NAMES:
                for _ in range(workers_per_pool):
                    self.cluster.start_worker(host, pool, CONCURRENCY[pool])

    def wait_ready(self, api_key: str, timeout: float) -> None:
        self.cluster.wait_ready(api_key, timeout)

    def call(self, fn: Callable[[], T]) -> T:
        return self._reach_api(fn)

    def enter_client_host(self) -> None:
        enter_namespace(self.bed.namespace("api"))

    def cut(self, host: str) -> None:
        self.bed.cut(host)

    def heal(self, host: str) -> None:
        self.bed.heal(host)

    def bed_pids(self) -> set[int]:
        return {pid for host in BED_HOSTS for pid in self.bed.pids(host)}

    def close(self) -> None:
        self.bed.close()


def make_target(cluster: bool, folder: Path, overrides: dict[str, str]) -> Any:
    return BedTarget(folder, overrides) if cluster else LocalTarget(folder, overrides)
