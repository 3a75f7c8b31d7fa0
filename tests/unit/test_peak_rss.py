"""Peak RSS of process trees over a span, and telling a local worker's pid from a remote
one's: on real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from services.broker.inspection import local_pid, node_names
from services.lab.peak_rss import PeakRss

MIB = 2**20
HOLD = "import time; block = b'x' * (64 * 2**20); time.sleep(60)"


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[bytes]]:
    """A child of this process holding 64 MiB, started as `celery worker --hostname`
    would name its node."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, "--hostname", "holder-1@%h"])
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


def test_a_worker_pid_counts_only_if_that_process_names_the_node(
    holder: subprocess.Popen[bytes],
) -> None:
    here = socket.gethostname()
    assert node_names(["celery", "worker", "--hostname", "gevent-1@%h"]) == {f"gevent-1@{here}"}
    assert local_pid(f"holder-1@{here}", holder.pid) == holder.pid
    # The same pid reported by a worker on another host is some other process here.
    assert local_pid("holder-1@elsewhere", holder.pid) is None
    assert local_pid(f"holder-1@{here}", os.getpid()) is None
    assert local_pid(f"holder-1@{here}", None) is None
