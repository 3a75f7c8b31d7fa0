"""Which processes the soak started, found by a mark in their environment, and which of
them outlived what should have ended them.

Every process the soak starts gets `MARKER_VARIABLE` in its environment, and so does
everything those start (prefork's pool processes, gunicorn's workers): found by that mark,
a process left behind is seen even after it was reparented away from its launcher.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

MARKER_VARIABLE = "JOBRUNNER_CHAOS_RUN"


@dataclass(frozen=True)
class Leak:
    pid: int
    command: str
    when: str  # what should have ended it: "kill of gevent-1@host", "the end of the soak"


def describe(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:120] or "?"
    except psutil.Error:
        return "?"


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it, now."""
    try:
        return {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return set()


def alive(pid: int, create_times: dict[int, float] | None = None) -> bool:
    """Still running (a zombie is not): and, given when it started, the same process
    rather than a new one that got its number."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_times is None or process.create_time() == create_times.get(pid)
    except psutil.Error:
        return False


def start_times(pids: set[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found[pid] = psutil.Process(pid).create_time()
    return found


def wait_gone(pids: set[int], timeout: float, when: str) -> list[Leak]:
    """Until every one of `pids` has ended, at most `timeout` seconds: those left, as
    leaks, after killing them (the soak leaves nothing behind)."""
    times = start_times(pids)
    deadline = time.monotonic() + timeout
    while (left := {p for p in times if alive(p, times)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    leaks = [Leak(pid, describe(pid), when) for pid in sorted(left)]
    kill(left)
    return leaks


def marked(marker: str) -> set[int]:
    """The live processes carrying `marker` in their environment (this one excepted)."""
    found = set()
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARKER_VARIABLE) == marker and alive(process.pid):
                found.add(process.pid)
    return found


def strays(
    marker: str, expected: Callable[[], set[int]], when: str, settle: float = 3.0
) -> list[Leak]:
    """Marked processes outside `expected()` (the soak's live processes and what runs
    under them), still there and still outside it `settle` seconds later (one on its
    way out is not a leak); killed once reported."""
    first = marked(marker) - expected()
    if not first:
        return []
    time.sleep(settle)
    left = (first & marked(marker)) - expected()
    leaks = [Leak(pid, describe(pid), when) for pid in sorted(left)]
    kill(left)
    return leaks


def kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
