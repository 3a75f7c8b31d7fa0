"""The README's own workload, as pasted into mypkg/jobs.py: it loads through
JOBRUNNER_WORKLOADS into a fresh process's catalog, with the params its signature says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_module() -> str:
    blocks = re.findall(
        r"```python\n(# mypkg/jobs\.py\n.*?)```", (ROOT / "README.md").read_text(), re.S
    )
    assert len(blocks) == 1, "the README shows one mypkg/jobs.py"
    return blocks[0]


def test_the_readme_workload_loads_and_runs(tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(readme_module())
    probe = (
        "from services.catalog.workloads import get_workload\n"
        "w = get_workload('checksum')\n"
        "print(w.kind, w.description, sorted(w.params.model_fields))\n"
        "print(w.run({'data': 'hello', 'rounds': 2}))\n"
        "print(*sorted(n for n, f in w.params.model_fields.items() if f.is_required()))\n"
    )
    env = {**os.environ, "JOBRUNNER_WORKLOADS": "mypkg.jobs",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    described, result, required = done.stdout.splitlines()
    assert described == "cpu sha256 of data, chained `rounds` times. ['data', 'rounds']"
    # The README's sweep of it, pasted, gives every parameter the workload requires (a
    # sweep without `data` stopped at its first point with a 422), and names the
    # project's own jobrunner, which a shell finds without an activated .venv.
    (sweep,) = re.findall(r"`([^`]*compare checksum[^`]*)`", (ROOT / "README.md").read_text())
    assert sweep.startswith(".venv/bin/jobrunner "), sweep
    given = set(re.findall(r"(?:-p|--param|--sweep) (\w+)=", sweep))
    assert set(required.split()) <= given, f"{sweep!r} leaves out {required}"
    import hashlib

    expected = hashlib.sha256(hashlib.sha256(b"hello").digest()).digest().hex()
    assert result == expected
