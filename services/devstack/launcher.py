"""The one launcher: Redis, the API and workers as processes of this machine.

`make run`, the tests, the benchmarks and `jobrunner compare --scale` all start their
processes here, and the API and every worker from the very command written for it in
docker-compose.yml (services/devstack/compose.py), so each way of running jobrunner
starts the same programs the same way. Other programs (the bench's stock Celery, Flower)
can run beside them, started and stopped with the rest.

It imports nothing of the server: it starts programs and talks to them over sockets, so
a client (the CLI) may use it too.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from services.core.settings import Settings
from services.devstack.compose import compose_commands
from services.devstack.processes import STOP_GRACE_SECONDS, ManagedProcess
from services.devstack.redis_server import RedisServer


class LaunchError(RuntimeError):
    """A process did not start, or did not become ready; the message says where to look."""


@dataclass
class Launcher:
    """The processes of one jobrunner stack on this machine, with their logs in `folder`.

    `overrides` are added to the environment every process gets (else this process's).
    On a host of the test bed (services/devstack/netns.py), `command_prefix` is the way
    into that host, put before every command; `host_name` is the host's name, in the
    workers' node names; and `reach` runs the readiness checks from inside that host.
    """

    folder: Path
    overrides: dict[str, str] = field(default_factory=dict)
    base_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    command_prefix: list[str] = field(default_factory=list)
    host_name: str | None = None
    reach: Callable[[Callable[[], Any]], Any] = field(default=lambda call: call())
    redis_server: RedisServer | None = None
    redis_url: str | None = None
    api: ManagedProcess | None = None
    processes: list[ManagedProcess] = field(default_factory=list)
    _started_per_pool: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.commands = compose_commands()

    # -- what every process gets ---------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        # Unbuffered, so a log shows what a process said before it died.
        env = {**self.base_env, "PYTHONUNBUFFERED": "1", **self.overrides}
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        return env

    @property
    def workers(self) -> list[ManagedProcess]:
        return [p for p in self.processes if p.node is not None]

    # -- Redis ---------------------------------------------------------------------------

    def start_redis(
        self, fsync: str = "always", bind: str = "127.0.0.1", port: int | None = None
    ) -> RedisServer:
        """A private redis-server with its data in folder/redis, listening on `bind`."""
        self.redis_server = RedisServer(
            self.folder / "redis", port=port, fsync=fsync, bind=bind,
            command_prefix=self.command_prefix, reach=self.reach,
        ).start()  # fmt: skip
        self.redis_url = self.redis_server.url
        return self.redis_server

    def use_redis(self, url: str) -> None:
        """A Redis someone else runs."""
        self.redis_url = url

    # -- planning processes, then starting them ------------------------------------------

    def api_process(self, host: str | None = None, port: int | None = None) -> ManagedProcess:
        env = self.env
        if host is not None:
            env["API_HOST"] = host
        if port is not None:
            env["API_PORT"] = str(port)
        argv = [*self.command_prefix, *self.commands["api"]]
        return ManagedProcess("api", argv, env, self.folder / "api.log")

    def worker_process(
        self, pool: str, concurrency: int | None = None, host: str | None = None
    ) -> ManagedProcess:
        """A worker of `pool` ("experiments" for the experiment worker), named as a
        container of it would be: `gevent-2@host`, numbered per pool from 1."""
        self._started_per_pool[pool] += 1
        name = f"{pool}-{self._started_per_pool[pool]}"
        node = f"{name}@{host or self.host_name or socket.gethostname()}"
        argv = [*self.command_prefix, *self.commands[f"worker-{pool}"], "--name", node]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        log_path = self.folder / f"{name}.log"
        return ManagedProcess(name, argv, self.env, log_path, pool, node, concurrency)

    def start(self, managed: ManagedProcess) -> ManagedProcess:
        """Start a planned process and keep it among this stack's, in place of a stopped
        one of the same name (an API started again)."""
        self.processes = [p for p in self.processes if p.name != managed.name or p.alive()]
        managed.start()
        if managed.name == "api":
            self.api = managed
        self.processes.append(managed)
        return managed

    def start_api(self, host: str | None = None, port: int | None = None) -> ManagedProcess:
        return self.start(self.api_process(host, port))

    def start_worker(self, pool: str, concurrency: int | None = None) -> ManagedProcess:
        return self.start(self.worker_process(pool, concurrency))

    def start_program(self, name: str, argv: list[str]) -> ManagedProcess:
        """Any other program beside the stack, with its environment (a stock Celery worker,
        Flower): stopped with the rest."""
        argv = [*self.command_prefix, *argv]
        return self.start(ManagedProcess(name, argv, self.env, self.folder / f"{name}.log"))

    # -- readiness -----------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """Where the API answers, from the address it was told to bind."""
        assert self.api is not None, "no API started"
        defaults = Settings.model_fields
        host = self.api.env.get("API_HOST", defaults["api_host"].default)
        port = self.api.env.get("API_PORT", defaults["api_port"].default)
        if host in ("0.0.0.0", "::", ""):
            # Bound to every address: say the one other hosts reach it on (the one on
            # the route to Redis, the cluster's meeting point), not 0.0.0.0.
            host = self.reach(lambda: outward_address(self.redis_url))
        return f"http://{host}:{port}"

    def wait_until(
        self,
        ready: Callable[[], bool],
        timeout: float,
        failure: str,
        watching: list[ManagedProcess],
        every: float = 0.2,
    ) -> None:
        """Until `ready()` is true (an exception from it means not yet); LaunchError with
        `failure` after `timeout` seconds, or with its log as soon as one of `watching`
        exits."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(watching)
            try:
                if self.reach(ready):
                    return
            except Exception:  # not up yet: a refused connection, Redis still starting
                pass
            if time.monotonic() > deadline:
                raise LaunchError(f"{failure} within {timeout:.0f}s; logs in {self.folder}")
            time.sleep(every)

    def wait_api_ready(
        self, timeout: float = 60.0, watching: list[ManagedProcess] | None = None
    ) -> None:
        """Until GET /readyz answers 200 (the API is up and reaches Redis); LaunchError
        if the API, or any of `watching`, exits meanwhile."""
        assert self.api is not None, "no API started"
        url = f"{self.api_url}/readyz"
        self.wait_until(
            lambda: requests.get(url, timeout=2).status_code == 200,
            timeout,
            f"the API was not ready at {self.api_url}",
            [self.api, *(watching or [])],
        )

    def wait_workers_ready(
        self,
        live_nodes: Callable[[], set[str]],
        timeout: float = 60.0,
        pools: set[str] | None = None,
    ) -> None:
        """Until `live_nodes()` names every worker this stack started and still runs (of
        `pools` only, if given).

        How to ask is the caller's: over HTTP (services/devstack/probes.py) for a client,
        through Celery for the tests.
        """
        waited_for = [w for w in self.workers if w.alive() and (pools is None or w.pool in pools)]
        expected = {w.node for w in waited_for}
        self.wait_until(
            lambda: expected <= live_nodes(),
            timeout,
            f"workers {sorted(expected)} did not all answer",
            waited_for,
            every=0.3,
        )

    @staticmethod
    def check_alive(starting: list[ManagedProcess]) -> None:
        """LaunchError, with the end of its log, if one of `starting` exited."""
        for managed in starting:
            if managed.process is not None and not managed.alive():
                log = managed.log_path.read_text(errors="replace")[-3000:]
                raise LaunchError(f"{managed.name} exited; see {managed.log_path}:\n{log}")

    # -- keeping it running, and stopping it ---------------------------------------------

    def restart_dead(self, among: list[ManagedProcess] | None = None) -> list[ManagedProcess]:
        """Start again, under the same name, every process (of `among`, else of the stack)
        that exited: what compose's restart policy does for a container."""
        candidates = self.processes if among is None else among
        dead = [p for p in candidates if p.process is not None and not p.alive()]
        for managed in dead:
            assert managed.process is not None
            managed.last_exit = managed.process.returncode
            managed.restarts += 1
            managed.start()
        return dead

    def stop_process(
        self, managed: ManagedProcess, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_SECONDS
    ) -> None:
        """Stop one process and forget it."""
        managed.stop(sig, grace)
        if managed in self.processes:
            self.processes.remove(managed)
        if managed is self.api:
            self.api = None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to every process at once, SIGKILL to those still there after `grace`
        seconds, then Redis, last: a stopping worker hands its running jobs back to the
        queue through it."""
        for managed in self.processes:
            if managed.alive():
                assert managed.process is not None
                managed.process.send_signal(signal.SIGTERM)  # a warm shutdown for Celery
        deadline = time.monotonic() + grace
        for managed in self.processes:
            managed.wait_or_kill(max(0.1, deadline - time.monotonic()))
        self.processes.clear()
        self.api = None
        if self.redis_server is not None:
            self.redis_server.stop()


def outward_address(redis_url: str | None) -> str:
    """This host's address on the route toward Redis (toward any network if Redis is on
    loopback), or 127.0.0.1 if it has no such route. A UDP connect only picks the route:
    nothing is sent."""
    target = urlsplit(redis_url or "").hostname or ""
    if target in ("", "localhost") or target.startswith("127."):
        target = "192.0.2.1"  # TEST-NET-1: never answers, but has the default route
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, 9))
        except OSError:
            return "127.0.0.1"
        return probe.getsockname()[0]
