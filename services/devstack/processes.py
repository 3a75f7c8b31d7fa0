"""One child process of a local stack: how to start it, where it logs, how to stop it;
and how every child of a launcher dies with it."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.devstack.compose import PROJECT_ROOT

# How long a process has to stop after SIGTERM before it is killed, unless told otherwise.
STOP_GRACE_SECONDS = 20.0

# prctl(2) option: the signal the kernel sends a process when its parent dies.
PR_SET_PDEATHSIG = 1


def _linux_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once here: the child, between fork and exec, must only
    call it, not load anything (another thread may hold a lock the loader wants)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _linux_prctl()


def die_with_launcher(death_signal: int) -> Callable[[], None] | None:
    """The `preexec_fn` that makes a child get `death_signal` when the process starting
    it dies, even by SIGKILL, or None where that cannot be had.

    Each child has a session of its own (so Ctrl-C reaches it only through its launcher,
    in order), so nothing else would stop it: a killed `make run` would leave its API,
    workers and Redis running. On a normal stop the launcher stops them itself, Redis
    last; this only matters when the launcher is gone.

    Linux only (prctl PR_SET_PDEATHSIG). The setting survives exec (but for a setuid,
    setgid or file-capability program), so it reaches the program at the end of the test
    bed's `ip netns exec … unshare … sh -c 'exec …'` too. "Parent" means the *thread*
    that forked the child, though: the signal comes when that thread ends.
    So only children started from the main thread, which lives as long as the launcher
    (make run's, the CLI's, pytest's), get it; from another thread, None.
    CPython calls `preexec_fn` after setsid, so it goes with `start_new_session=True`.
    """
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl, launcher, sig = _PRCTL, os.getpid(), int(death_signal)

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != launcher:
            # The launcher died between fork and prctl: no signal will come any more.
            os._exit(1)

    return set_parent_death_signal


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
    # What it gets if its launcher dies without stopping it. Not SIGTERM: nobody is left
    # to bound a shutdown, and one can wait forever on what died with the launcher (a
    # prefork worker whose Redis went too never ends: Celery retries the broker without
    # limit). What a killed worker held comes back as from any killed worker: leases
    # lapse, messages are delivered again. Its own children go too: prefork's pool
    # processes have SIGKILL as their parent-death signal, gunicorn's workers leave when
    # their parent changes.
    death_signal: int = signal.SIGKILL

    def start(self) -> ManagedProcess:
        with self.log_path.open("ab") as log:
            # A session of its own, so a terminal's Ctrl-C reaches the children only
            # through their launcher, in order: workers first, Redis last. And gone with
            # the launcher if it dies without stopping them.
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=PROJECT_ROOT, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_launcher(self.death_signal),
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


def stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM, for a runner's loop (`make run`, `make cluster`)
    to end on and then stop its processes in order, rather than die mid-way."""
    stop = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop
