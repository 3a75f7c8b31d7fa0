"""make test's first phase relies on pytest-xdist's `xdist_group`: one stack per module
whose tests share it, one multi-host bed at a time (they all use one subnet). A pytest
release once stored test ids where pytest-xdist no longer added the group, and the groups
vanished without a word; this runs a real two-worker session to see that they hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GROUPED_MODULE = """
import os
import pytest

pytestmark = pytest.mark.xdist_group("together")


@pytest.mark.parametrize("index", range(6))
def test_records_its_worker(index):
    with open(os.environ["WORKERS_SEEN"], "a") as seen:
        seen.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_a_group_runs_on_one_worker_under_loadgroup(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED_MODULE)
    seen = tmp_path / "workers.txt"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "-p", "no:cloudcoil", str(tmp_path)],
        cwd=tmp_path, env={**outside_pytest(), "WORKERS_SEEN": str(seen)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    workers = seen.read_text().split()
    assert len(workers) == 6
    assert len(set(workers)) == 1, f"one group ran on several workers: {sorted(set(workers))}"


def outside_pytest() -> dict[str, str]:
    """This environment without what the running pytest (an xdist worker) set."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
