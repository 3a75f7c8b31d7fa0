"""The API master's metrics folder (api/gunicorn_conf.py): a master killed outright
leaves its folder behind, and the next master removes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_new_master_removes_the_folders_of_dead_masters(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / f"jobrunner-api-metrics-{finished.stdout.strip()}-abc"
    alive = tmp_path / f"jobrunner-api-metrics-{os.getpid()}-def"
    other = tmp_path / "jobrunner-api-metrics-notapid"
    for folder in (dead, alive, other):
        folder.mkdir()
    started = subprocess.run(
        [sys.executable, "-c",
         "import os; from api import gunicorn_conf as g; g.on_starting(None); "
         "print(os.environ[g.MULTIPROC_VARIABLE])"],
        capture_output=True, text=True, check=True, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        | {"TMPDIR": str(tmp_path)},
    )  # fmt: skip
    own = Path(started.stdout.strip())
    assert not dead.exists(), "the folder of a dead master was left"
    assert alive.exists() and other.exists(), "a live master's folder, or another, went"
    assert own.parent == tmp_path and own.name.startswith("jobrunner-api-metrics-")
