"""bench/pool_run.py on a real stack: it runs the jobs it says, and its figures are
consistent with the records it read (nothing asserted of their size: timing is the
bench's business)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_pool_run_reports_every_figure_for_each_repetition(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.pool_run", "--pool", "threads", "--concurrency", "4",
         "--workload", "sleep", "--jobs", "40", "--reps", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    # Its stack's folder (Redis's data, the logs) goes once the run has worked.
    assert not list(tmp_path.glob("jobrunner-pool-run-*")), list(tmp_path.iterdir())
    lines = run.stdout.strip().splitlines()
    figures = re.compile(
        r"([\d,]+) jobs/s, (\d+)% of ideal, worker CPU ([\d.]+) ms/job, run beyond the "
        r"workload (-?[\d.]+) ms, refill gap (-?[\d.]+) ms, ([\d.]+) Redis commands/job"
    )
    reps = [figures.search(line) for line in lines if line.startswith("rep ")]
    assert len(reps) == 2 and all(reps), run.stdout
    for match in reps:
        assert match is not None
        rate, share = float(match.group(1).replace(",", "")), int(match.group(2))
        # Four slots of 0.1 s sleeps: at most 40 jobs/s, and the share says the same, both
        # as printed: the share rounded to a point, the rate to a whole job a second
        # (1.25 points of the share).
        assert 0 < rate <= 40 * 1.05
        assert abs(share - rate / 40 * 100) <= 0.5 + 0.5 / 40 * 100
        assert float(match.group(3)) > 0  # the worker did spend CPU on them
        assert float(match.group(6)) > 1  # a job is stored, queued, claimed and recorded
    assert lines[-2].startswith("threads -c4, 40 x sleep, medians of 2:"), run.stdout
    memory = re.fullmatch(r"worker memory after the runs: ([\d.]+) MiB per slot \(PSS\)", lines[-1])
    # A worker process is tens of MiB, over four slots: a few MiB each, never nothing.
    assert memory and 1 < float(memory.group(1)) < 200, run.stdout
