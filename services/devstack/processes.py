"""One child process of a local stack: how to start it, where it logs, how to stop it."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from services.devstack.compose import PROJECT_ROOT

# How long a process has to stop after SIGTERM before it is killed, unless told otherwise.
STOP_GRACE_SECONDS = 20.0


@dataclass
class ManagedProcess:
    """One child process: how to start it, where it logs, and what it is."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    pool: str | None = None  # the pool a worker serves; "experiments" for that worker
    node: str | None = None  # a worker's Celery node name
    concurrency: int | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = field(default=0)
    last_exit: int | None = None  # the exit status of its previous run, once restarted

    def start(self) -> ManagedProcess:
        with self.log_path.open("ab") as log:
            # A session of its own, so a terminal's Ctrl-C reaches the children only
            # through their launcher, in order: workers first, Redis last.
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=PROJECT_ROOT, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_SECONDS) -> None:
        """`sig`, then SIGKILL if it is still there after `grace` seconds."""
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(sig)
        self.wait_or_kill(grace)

    def wait_or_kill(self, grace: float) -> None:
        """Wait up to `grace` seconds for it to end, then SIGKILL. Never a second SIGTERM:
        to a Celery worker in its soft shutdown, that cancels the running jobs at once."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
