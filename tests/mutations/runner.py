"""Apply each mutation of the catalog to a throwaway copy of the project and run the tests
that must catch it there.

The project itself is never touched: other people (and other test runs) use it while
the gate runs, and a crash mid-way must not leave a mutant behind. The copy holds the
files git knows of or would add (`git ls-files --cached --others --exclude-standard`:
the working tree, without .venv and caches) and runs with the project's own interpreter;
PYTHONPATH and the working directory put the copy's packages ahead of the editable
install (a `.pth` entry naming the project, which comes after PYTHONPATH), and a
preflight checks that `api`, `worker`, `services` and `tests` import from the copy.

A mutation is caught when pytest reports a failing test (exit status 1); it survives
when its tests pass (or skip). Any other exit (no test collected, a usage error, a
timeout of the run) is a broken run, which fails the gate as a survivor does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.mutations.catalog import Mutation

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "worker", "services", "tests", "jobrunner")
# A mutation's tests, stacks started and stopped included; past it the run is broken.
RUN_TIMEOUT_S = 1200.0


# The pytest runs going on, so that an interrupted gate stops them (each has a session of
# its own, which a terminal's Ctrl-C does not reach).
_running: set[subprocess.Popen[bytes]] = set()
_running_lock = threading.Lock()
_stopping = threading.Event()


class StaleMutation(Exception):
    """An edit's text is not in its file exactly once: the code moved on; update it."""


@dataclass
class Outcome:
    mutation: Mutation
    verdict: str  # "caught", "SURVIVED", "STALE", "BROKEN"
    ran: list[str] = field(default_factory=list)
    caught_by: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == "caught"


def project_files(root: Path = ROOT) -> list[str]:
    """The files of the working tree git tracks or would add (not .venv, not caches)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    return sorted({p for p in listed.split("\0") if p and (root / p).is_file()})


def snapshot(dest: Path, root: Path = ROOT) -> Path:
    """A copy of the project's working tree in `dest`."""
    for relative in project_files(root):
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)
    return dest


def apply(mutation: Mutation, copy: Path) -> None:
    """The mutation's edits, in the copy; StaleMutation if one's text is not there once."""
    for edit in mutation.edits:
        path = copy / edit.path
        text = path.read_text()
        found = text.count(edit.old)
        if found != 1:
            raise StaleMutation(f"{edit.path}: the text to replace is there {found} times")
        path.write_text(text.replace(edit.old, edit.new))


def environment(copy: Path) -> dict[str, str]:
    """The environment a run in `copy` gets: its packages first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTEST_ADDOPTS", None)
    return env


def preflight(copy: Path) -> None:
    """RuntimeError unless every package of the project imports from `copy`."""
    code = "import sys, importlib\nfor name in sys.argv[1:]:\n" + (
        "    print(importlib.import_module(name).__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *PACKAGES], cwd=copy, env=environment(copy),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"importing the copy's packages failed:\n{result.stderr}")
    strays = [
        line
        for line in result.stdout.split()
        if not Path(line).resolve().is_relative_to(copy.resolve())
    ]
    if strays:
        raise RuntimeError(f"packages imported from outside the copy {copy}: {strays}")


def pytest_run(
    copy: Path, tests: Iterable[str], log: Path
) -> tuple[int, list[str], list[str], list[str]]:
    """Run `tests` in `copy`, every one of them (so the table names every test that
    caught a mutation): (exit status, failed, skipped, passed) test names."""
    junit = log.with_suffix(".xml")
    argv = [
        sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
        f"--basetemp={log.with_suffix('.tmp')}", f"--junitxml={junit}", *tests,
    ]  # fmt: skip
    with log.open("wb") as out, _running_lock:
        if _stopping.is_set():
            raise KeyboardInterrupt
        # A session of its own, so a run that outlives its time is stopped whole: pytest
        # first, by Ctrl-C (its fixtures stop their stacks), then anything left.
        process = subprocess.Popen(
            argv, cwd=copy, env=environment(copy), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        _running.add(process)
    try:
        status = process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_group(process)
        status = -1
    except BaseException:
        stop_group(process)
        raise
    finally:
        with _running_lock:
            _running.discard(process)
    failed, skipped, passed = read_junit(junit)
    return status, failed, skipped, passed


def stop_all() -> None:
    """Stop every pytest run going on, and start no other (the gate was interrupted)."""
    with _running_lock:
        _stopping.set()
        running = list(_running)
    for process in running:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C to a run's process group, then SIGKILL to it if it is not gone in 60 s."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def read_junit(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(failed, skipped, passed) test names of a pytest junit report (none if missing)."""
    if not path.exists():
        return [], [], []
    failed, skipped, passed = [], [], []
    for case in ET.parse(path).iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped.append(name)
        else:
            passed.append(name)
    return failed, skipped, passed


def run_mutation(
    mutation: Mutation, base: Path, workdir: Path, tests: list[str] | None = None
) -> Outcome:
    """Copy `base`, apply `mutation` there, run its tests (or `tests`); the outcome."""
    started = time.monotonic()
    copy = workdir / mutation.id / "project"
    shutil.copytree(base, copy, symlinks=True)
    log = workdir / mutation.id / "pytest.log"
    try:
        apply(mutation, copy)
    except StaleMutation as exc:
        return Outcome(mutation, "STALE", detail=str(exc))
    ran = tests or list(mutation.tests)
    status, failed, skipped, _ = pytest_run(copy, ran, log)
    outcome = Outcome(
        mutation, "caught" if status == 1 and failed else "SURVIVED" if status == 0 else "BROKEN",
        ran=ran, caught_by=failed, skipped=skipped, seconds=time.monotonic() - started,
    )  # fmt: skip
    if not outcome.ok:
        outcome.detail = f"pytest exit {status}; log {log}:\n" + tail(log)
    return outcome


def run_baseline(tests: list[str], base: Path, workdir: Path) -> tuple[bool, str]:
    """The tests on the unmutated copy: they must pass there for a failure to mean
    anything. (passed, what went wrong)."""
    log = workdir / "baseline" / "pytest.log"
    log.parent.mkdir(parents=True)
    copy = workdir / "baseline" / "project"
    shutil.copytree(base, copy, symlinks=True)
    status, failed, skipped, _ = pytest_run(copy, tests, log)
    if status != 0:
        return False, f"pytest exit {status}, failed {failed}; log {log}:\n{tail(log)}"
    if skipped:
        return False, f"skipped without any mutation (a skip cannot catch one): {skipped}"
    return True, ""


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def make_workdir(keep: bool) -> Path:
    base = Path(tempfile.mkdtemp(prefix="jobrunner-mutations-"))
    if not keep:
        import atexit

        atexit.register(shutil.rmtree, base, ignore_errors=True)
    return base
