"""A virtual environment per peer, made on first use outside the repository:
~/.cache/jobrunner-bench/venvs/<peer>-<version>-<hash of its pins>, from PyPI, with
exactly the versions of versions.py. The next run finds it and installs nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from bench.peers.versions import PINS, library_version

# XDG's cache folder when set, else ~/.cache: what a user clears to start again.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jobrunner-bench"
# Written last, holding the pins it was installed from: a half-made environment (an
# install that failed or was interrupted) has none and is made again.
STAMP = "jobrunner-bench-installed"


def venv_dir(peer: str, cache: Path = CACHE) -> Path:
    digest = hashlib.sha256("\n".join(PINS[peer]).encode()).hexdigest()[:8]
    return cache / "venvs" / f"{peer}-{library_version(peer)}-{digest}"


def python_of(folder: Path) -> Path:
    return folder / "bin" / "python"


def ensure_venv(peer: str, cache: Path = CACHE, log: Path | None = None) -> Path:
    """The interpreter of `peer`'s environment, made and installed first if need be."""
    folder = venv_dir(peer, cache)
    pins = "\n".join(PINS[peer]) + "\n"
    stamp = folder / STAMP
    if stamp.is_file() and stamp.read_text() == pins:
        return python_of(folder)
    print(f"  making {folder} (pip install {' '.join(PINS[peer][:2])} ...)", flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # The base interpreter, not this venv's: a venv made from inside another gets the
    # base one anyway, and this says so.
    base = getattr(sys, "_base_executable", sys.executable)
    output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        subprocess.run([base, "-m", "venv", "--clear", str(folder)], check=True)
        subprocess.run(
            [str(python_of(folder)), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", "--no-input", *PINS[peer]],
            check=True, stdout=output, stderr=output,
        )  # fmt: skip
    finally:
        if log:
            output.close()  # type: ignore[union-attr]
    stamp.write_text(pins)
    return python_of(folder)


def freeze(python: Path) -> list[str]:
    """What an environment holds, for the record."""
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()


if __name__ == "__main__":
    for name in sys.argv[1:] or list(PINS):
        print(name, ensure_venv(name))
