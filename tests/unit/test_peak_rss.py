"""Peak RSS of process trees over a span, on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from services.lab.peak_rss import PeakRss

MIB = 2**20
HOLD = "import time; block = b'x' * (64 * 2**20); time.sleep(60)"


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[bytes]]:
    """A child of this process holding 64 MiB."""
    child = subprocess.Popen([sys.executable, "-c", HOLD])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).memory_info().rss < 64 * MIB:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield child
    finally:
        child.kill()
        child.wait()


def test_children_count_only_when_asked(holder: subprocess.Popen[bytes]) -> None:
    with PeakRss([os.getpid()], children=True) as tree:
        time.sleep(0.1)
    with PeakRss([os.getpid()], children=False) as alone:
        time.sleep(0.1)
    assert alone.peak_bytes > 0
    assert tree.peak_bytes >= alone.peak_bytes + 60 * MIB


def test_the_peak_is_kept_after_the_memory_is_freed() -> None:
    with PeakRss([os.getpid()], children=False) as meter:
        time.sleep(0.05)
        before = meter.peak_bytes
        block = b"x" * (64 * MIB)
        time.sleep(0.1)
        del block
        time.sleep(0.05)
    assert meter.peak_bytes >= before + 60 * MIB
    assert psutil.Process().memory_info().rss < meter.peak_bytes - 30 * MIB


def test_a_meter_left_open_stops_sampling_by_itself() -> None:
    """A worker's meter that the lab never closed (worker/self_report.py) ends at
    max_seconds: memory taken after that is not seen."""
    meter = PeakRss([os.getpid()], children=False, max_seconds=0.1).start()
    time.sleep(0.3)
    block = b"x" * (64 * MIB)
    time.sleep(0.1)
    assert meter.peak_bytes < psutil.Process().memory_info().rss - 30 * MIB
    del block
    meter.stop()
