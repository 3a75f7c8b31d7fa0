"""The launcher's own promises, on real child processes: one SIGTERM each on stop (a
second one cancels a Celery worker's running jobs), the grace before SIGKILL, restarts
under the same name, and a process that dies while starting named with its log."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from services.devstack.launcher import Launcher, LaunchError
from services.devstack.redis_server import free_port

# Counts the SIGTERMs it gets in a file, and ends only after `linger` seconds past the
# first, as a worker in its soft shutdown does.
COUNTING_PROGRAM = """
import signal, sys, time
count, path, linger = 0, sys.argv[1], float(sys.argv[2])
def on_term(*_):
    global count
    count += 1
    open(path, "w").write(str(count))
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while count == 0:
    time.sleep(0.01)
time.sleep(linger)
"""


def started(launcher: Launcher, name: str, *args: str) -> None:
    managed = launcher.start_program(name, [sys.executable, "-c", COUNTING_PROGRAM, *args])
    deadline = time.monotonic() + 10
    while "ready" not in managed.log_path.read_text():
        assert time.monotonic() < deadline, managed.log_path.read_text()
        time.sleep(0.02)


def test_stop_sends_each_process_one_sigterm_and_waits_out_its_grace(tmp_path: Path) -> None:
    """Two SIGTERMs sent microseconds apart can reach a process as one, so a second one
    is caught only when the first was handled in between; the wait is always checked."""
    launcher = Launcher(tmp_path / "stack")
    counts = [tmp_path / "a.count", tmp_path / "b.count"]
    for index, count in enumerate(counts):
        started(launcher, f"lingering-{index}", str(count), "1.0")
    processes = list(launcher.processes)
    launcher.stop(grace=10)
    assert [path.read_text() for path in counts] == ["1", "1"]  # one SIGTERM, never two
    # Each ended by itself after its linger (0), not by SIGKILL (-9) within the grace.
    assert [p.process.returncode for p in processes if p.process] == [0, 0]
    assert not launcher.processes


def test_stop_kills_what_outlives_the_grace(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path / "stack")
    started(launcher, "stubborn", str(tmp_path / "count"), "60")
    managed = launcher.processes[0]
    launcher.stop(grace=0.5)
    assert managed.process is not None and managed.process.returncode == -9


def test_a_dead_process_is_restarted_under_its_name(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path / "stack")
    started(launcher, "short-lived", str(tmp_path / "count"), "0")
    managed = launcher.processes[0]
    first_pid = managed.pid
    managed.stop()
    assert launcher.restart_dead() == [managed]
    assert managed.alive() and managed.pid != first_pid and managed.restarts == 1
    assert managed.last_exit == 0
    launcher.stop(grace=5)


def test_a_process_that_dies_while_the_api_starts_is_named_with_its_log(tmp_path: Path) -> None:
    # Redis where none listens: the API cannot become ready.
    launcher = Launcher(tmp_path / "stack", overrides={"REDIS_URL": "redis://127.0.0.1:1/0"})
    launcher.start_api(host="127.0.0.1", port=free_port())
    broken = launcher.start_program("broken", [sys.executable, "-c", "print('boom'); exit(3)"])
    try:
        with pytest.raises(LaunchError, match="broken exited") as raised:
            launcher.wait_api_ready(timeout=30, watching=[broken])
        assert "boom" in str(raised.value)
    finally:
        launcher.stop(grace=5)
