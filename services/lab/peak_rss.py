"""The peak memory of a few processes over one span of time, sampled on a thread of its own.

The lab wraps each local target's run in one, and each worker runs one on itself while
the lab measures its pool (worker/self_report.py), so a target's peak RSS is that of the
processes that ran its jobs, during its run. `ru_maxrss` cannot say that: it is one
process's lifetime peak, so it misses a prefork pool's children and repeats a busier
earlier run.

The figure is the sum of the processes' RSS, as `top` would add them up: pages a forked
child still shares with its parent count once per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import TracebackType

import psutil

# Memory is read this often; it is cheap (one /proc read per process).
SAMPLE_EVERY_SECONDS = 0.02
# Finding children scans every process on the host, far dearer than one read, so it is
# done less often: pool processes live for the whole run, and a new one is seen within this.
CHILDREN_EVERY_SECONDS = 0.25


class PeakRss:
    """`with PeakRss(pids, children=True) as meter: ...`, then `meter.peak_bytes`; or
    `meter.start()` … `meter.stop()` where the span is not a block.

    `children`: count each process's descendants too (a prefork pool, a process pool).
    A process that is gone, or that this user may not read, counts as nothing.
    `max_seconds`: the sampling ends by itself then, if nobody stopped it (a meter left
    open by a client that went away must not sample forever).
    """

    def __init__(
        self, pids: Iterable[int], children: bool, max_seconds: float | None = None
    ) -> None:
        self.roots = [process for pid in pids if (process := _process(pid)) is not None]
        self.children = children
        self.max_seconds = max_seconds
        self.members: list[psutil.Process] = list(self.roots)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def start(self) -> PeakRss:
        self._refresh_members()
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> int:
        """End the sampling; the peak, in bytes."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak_bytes

    def __enter__(self) -> PeakRss:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _sample_until_stopped(self) -> None:
        refreshed = started = time.monotonic()
        while not self._stop.wait(SAMPLE_EVERY_SECONDS):
            if self.max_seconds is not None and time.monotonic() - started > self.max_seconds:
                return
            if time.monotonic() - refreshed >= CHILDREN_EVERY_SECONDS:
                self._refresh_members()
                refreshed = time.monotonic()
            self._sample()

    def _refresh_members(self) -> None:
        if not self.children:
            return
        members = list(self.roots)
        for root in self.roots:
            try:
                members += root.children(recursive=True)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.members = members

    def _sample(self) -> None:
        total = 0
        for process in self.members:
            try:
                total += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak_bytes = max(self.peak_bytes, total)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
