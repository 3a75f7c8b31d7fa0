"""A local runner's processes live and die with it: killed outright (SIGKILL, which it
cannot catch), it leaves no API, worker or Redis behind; and one run folder has one
runner at a time, a second one refusing to start while the first lives."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from services.devstack import netns
from services.devstack.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
# Generous: a child that outlives its launcher never goes at all.
GONE_WITHIN_SECONDS = 60.0
UP_WITHIN_SECONDS = 180.0
# A stopping worker's grace for running jobs (none run here): keeps a normal stop short.
SHUTDOWN_GRACE = "2"


def gone(process: psutil.Process) -> bool:
    """Exited: no such process (psutil knows a reused pid for another), or a zombie
    nobody reaped yet (an orphan's new parent may be slow to, or never, reap it)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_all_gone(
    processes: list[psutil.Process], timeout: float = GONE_WITHIN_SECONDS
) -> list[psutil.Process]:
    """Until every one of `processes` has exited, at most `timeout` seconds: those left."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in processes if not gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_leftovers(processes: list[psutil.Process]) -> None:
    """What a failed test must not leave running on a shared machine."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running():  # not a pid used again by someone else's process
                process.kill()


# -- the mechanism, on one child: quick ------------------------------------------------

# A launcher in miniature: it starts a program as the runner does (ManagedProcess, from
# its main thread) and a RedisServer, prints their pids, and waits to be killed.
MINI_LAUNCHER = """
import json, os, sys, time
from pathlib import Path
from services.devstack.processes import ManagedProcess
from services.devstack.redis_server import RedisServer

folder, prefix, with_redis = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3] == "1"
argv = [*prefix, sys.argv[4], "300"]
sleeper = ManagedProcess("sleeper", argv, dict(os.environ), folder / "sleeper.log").start()
pids = [sleeper.pid]
if with_redis:
    pids.append(RedisServer(folder / "redis").start().process.pid)
print(json.dumps(pids), flush=True)
time.sleep(300)
"""


@contextlib.contextmanager
def mini_launcher(
    folder: Path, prefix: list[str], with_redis: bool
) -> Iterator[list[psutil.Process]]:
    """Start the mini launcher; its children (once the program runs) for the block, at
    whose end it is SIGKILLed. Whether they outlived it is for the caller to see."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    launcher = subprocess.Popen(
        [sys.executable, "-c", MINI_LAUNCHER, str(folder), json.dumps(prefix),
         "1" if with_redis else "0", sleep],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert launcher.stdout is not None
        children = [psutil.Process(pid) for pid in json.loads(launcher.stdout.readline())]
        # Through a command prefix, the pid is first that of `ip`, then of `unshare` and
        # `sh`, each exec'ing the next: the block starts once it is `sleep`'s.
        deadline = time.monotonic() + GONE_WITHIN_SECONDS
        while children[0].name() != "sleep":
            assert time.monotonic() < deadline, children[0].cmdline()
            time.sleep(0.05)
        yield children
    finally:
        launcher.kill()
        launcher.wait()


def test_a_child_and_redis_die_with_a_killed_launcher(tmp_path: Path) -> None:
    with mini_launcher(tmp_path, prefix=[], with_redis=True) as children:
        assert [child.name() for child in children] == ["sleep", "redis-server"]
    left = wait_all_gone(children)
    kill_leftovers(left)
    assert not left, f"outlived their launcher: {left}"


@pytest.mark.skipif(bool(netns.unavailable_reason()), reason=str(netns.unavailable_reason()))
def test_a_child_on_a_test_bed_host_dies_with_a_killed_launcher(tmp_path: Path) -> None:
    """Through the bed's `ip netns exec … unshare … sh -c 'exec …'`, the signal still
    reaches the program at the end of the chain (the pid Popen gives is its own)."""
    with netns.Bed(prefix="jrlife", hosts=["w1"]) as bed:
        prefix = bed.command_prefix("w1")
        with mini_launcher(tmp_path, prefix, with_redis=False) as [child]:
            assert child.pid in bed.pids("w1")  # the program itself, on the host
        left = wait_all_gone([child])
        # Checked before the bed's close, which would stop it anyway.
        assert not left, "the program on the bed host outlived its launcher"


# -- the real runner: make run -----------------------------------------------------------


class Runner:
    """One `python -m services.devstack` (make run) on `run_dir`, its output in a file."""

    def __init__(self, run_dir: Path, output: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JOBRUNNER_API_KEYS")}
        env.update(
            API_PORT=str(free_port()), JOBRUNNER_RUN_DIR=str(run_dir), PYTHONUNBUFFERED="1",
            JOB_SHUTDOWN_GRACE=SHUTDOWN_GRACE,
        )  # fmt: skip
        self.output = output
        # Every pool's worker, as make run starts them; prefork's pool processes and
        # gunicorn's workers are the runner's grandchildren.
        with output.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.devstack"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def printed(self) -> str:
        return self.output.read_text()

    def wait_up(self) -> None:
        deadline = time.monotonic() + UP_WITHIN_SECONDS
        while "jobrunner is up at" not in self.printed():
            assert self.process.poll() is None, self.printed()
            assert time.monotonic() < deadline, self.printed()
            time.sleep(0.2)

    def printed_pids(self) -> dict[str, int]:
        """The pid of every process it said it started, Redis's too."""
        started = dict(re.findall(r"^started\s+(\S+)\s+pid (\d+)", self.printed(), re.M))
        [redis] = re.findall(r"^redis\s.*\(pid (\d+),", self.printed(), re.M)
        return {name: int(pid) for name, pid in {**started, "redis": redis}.items()}

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=120)


@pytest.fixture
def runners(tmp_path: Path) -> Iterator[list[Runner]]:
    """The runners a test starts; each stopped, and whatever they left killed, at the end."""
    started: list[Runner] = []
    yield started
    for runner in started:
        left = runner.descendants() if runner.process.poll() is None else []
        runner.stop()
        kill_leftovers(left)


def test_a_killed_runner_leaves_nothing_and_one_folder_has_one_runner(
    tmp_path: Path, runners: list[Runner]
) -> None:
    run_dir = tmp_path / ".run"
    first = Runner(run_dir, tmp_path / "first.out")
    runners.append(first)
    first.wait_up()
    named = first.printed_pids()
    assert set(named) == {"api", "experiments-1", "threads-1", "prefork-1", "gevent-1", "redis"}
    every = first.descendants()  # gunicorn's and prefork's own children too
    assert set(named.values()) <= {p.pid for p in every}

    # A second runner on the same folder refuses, in one line naming the first.
    second = Runner(run_dir, tmp_path / "second.out")
    runners.append(second)
    try:
        status = second.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a second runner started on {run_dir}:\n{second.printed()}")
    said = second.printed().strip().splitlines()
    assert status != 0
    assert len(said) == 1, said
    assert f"pid {first.process.pid}" in said[0] and str(run_dir) in said[0], said
    assert first.process.poll() is None  # the first runs on, untouched

    try:
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        left = wait_all_gone(every)
        assert not left, f"outlived the runner: {left}"
    finally:
        kill_leftovers(every)

    # Its lock file is still there, naming a dead runner: it blocks nobody.
    assert (run_dir / "lock").read_text().strip() == str(first.process.pid)
    third = Runner(run_dir, tmp_path / "third.out")
    runners.append(third)
    third.wait_up()
    third.stop()
    assert third.process.returncode == 0, third.printed()


def test_an_api_role_bound_to_loopback_says_other_machines_cannot_reach_it(
    tmp_path: Path,
) -> None:
    """`make run ROLE=api` without API_HOST listens on 127.0.0.1: up, but it says so, and
    how to open it to the cluster."""
    redis_server = RedisServer(tmp_path / "redis").start()
    output = tmp_path / "api-role.out"
    env = {k: v for k, v in os.environ.items() if k != "API_HOST"}
    env.update(
        REDIS_URL=redis_server.url, JOBRUNNER_RUN_DIR=str(tmp_path / ".run"),
        API_PORT=str(free_port()), PYTHONUNBUFFERED="1",
    )  # fmt: skip
    with output.open("w") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "services.devstack", "--role", "api"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + UP_WITHIN_SECONDS
        while "jobrunner is up at" not in output.read_text():
            assert runner.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        time.sleep(0.5)
        printed = output.read_text()
        assert "jobrunner is up at http://127.0.0.1:" in printed
        assert "other machines cannot reach it; set API_HOST=0.0.0.0" in printed
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=60)
        redis_server.stop()
