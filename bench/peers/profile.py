"""Where a jobrunner worker's CPU goes on no-op jobs: py-spy samples the worker (and a
prefork worker's pool processes) during one measured run, sent one job a call, and the
samples are summed by where their innermost frame is (jobrunner's own code, Celery,
kombu, redis-py, gevent, the standard library) and by function.

Samples are taken of the thread holding the GIL (`--gil`): py-spy's idle detection
counted threads blocked in epoll or a socket read as busy here, and a thread without
the GIL runs no Python. So the shares are of the worker's Python time; what the kernel
does for it (its system CPU: socket calls, futexes, epoll) is measured beside them from
the process tree's CPU times. `--nonblocking` keeps the worker running while py-spy reads
its stacks, at the price of an odd torn stack.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from services.devstack.compose import PROJECT_ROOT

FRAME = re.compile(r"^(?P<name>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")
# The folders of jobrunner's own code, as they appear in a frame's path.
OWN = tuple(f"{PROJECT_ROOT}/{folder}/" for folder in ("services", "worker", "api", "jobrunner"))
LIBRARY = re.compile(r"site-packages/(?P<package>[A-Za-z_][\w]*)")
STDLIB = re.compile(r"/lib/python3\.\d+/(?P<module>[\w]+)")


def py_spy() -> str | None:
    """The py-spy of the bench extra (next to this interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def parse_raw(text: str) -> Counter[tuple[tuple[str, str], ...]]:
    """py-spy's `--format raw` (collapsed stacks: `frame;frame;... count`) as stacks of
    (function, file) from the outermost, with their sample counts; the process and
    thread pseudo-frames that `--subprocesses` and `--threads` add are dropped."""
    stacks: Counter[tuple[tuple[str, str], ...]] = Counter()
    for line in text.splitlines():
        body, _, count = line.rstrip().rpartition(" ")
        if not body or not count.isdigit():
            continue
        frames = []
        for part in body.split(";"):
            match = FRAME.match(part.strip())
            if match:
                frames.append((match["name"], match["path"]))
        if frames:
            stacks[tuple(frames)] += int(count)
    return stacks


def area(path: str) -> str:
    """Who a frame's code belongs to."""
    if path.startswith(OWN):
        return "jobrunner (" + path[len(str(PROJECT_ROOT)) + 1 :].split("/")[0] + "/)"
    library = LIBRARY.search(path)
    if library:
        return library["package"]
    stdlib = STDLIB.search(path)
    if stdlib:
        return f"stdlib {stdlib['module']}"
    return "other"


def short(path: str) -> str:
    """A frame's file as a reader finds it: in a package, in the standard library, or in
    this project (whose .venv holds the packages, so those are looked for first)."""
    library = path.find("site-packages/")
    if library >= 0:
        return path[library + len("site-packages/") :]
    stdlib = STDLIB.search(path)
    if stdlib:
        return path[stdlib.start() + 1 :]
    if path.startswith(f"{PROJECT_ROOT}/"):
        return path[len(str(PROJECT_ROOT)) + 1 :]
    return path


@dataclass
class Profile:
    samples: int
    by_area: list[tuple[str, float]]  # share of samples whose innermost frame is there
    by_function: list[tuple[str, float]]  # innermost frames
    own_inclusive: list[tuple[str, float]]  # jobrunner's functions on the stack


def summarize(stacks: Counter[tuple[tuple[str, str], ...]], top: int = 12) -> Profile:
    total = sum(stacks.values())
    areas: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        name, path = stack[-1]
        areas[area(path)] += count
        leaves[f"{name} ({short(path)})"] += count
        for own in {f"{n} ({short(p)})" for n, p in stack if p.startswith(OWN)}:
            inclusive[own] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(key, count / total) for key, count in counter.most_common(top)] if total else []

    return Profile(total, shares(areas), shares(leaves), shares(inclusive))


def markdown(title: str, profile: Profile, user_ms: float, system_ms: float) -> str:
    """The profile as tables; each share also as milliseconds of a job's user CPU (the
    Python time py-spy sampled is user time: the kernel's part is the system CPU)."""

    def rows(items: list[tuple[str, float]]) -> str:
        return "\n".join(
            f"| {name} | {100 * share:.1f} % | {share * user_ms:.3f} |" for name, share in items
        )

    head = "| share of GIL samples | ms of user CPU a job |\n| --- | ---: | ---: |"
    return (
        f"**{title}** ({profile.samples:,} samples): worker CPU a job {user_ms:.3f} ms user "
        f"+ {system_ms:.3f} ms system (kernel)\n\n"
        f"| innermost frame in {head}\n{rows(profile.by_area)}\n\n"
        f"| innermost function {head}\n{rows(profile.by_function)}\n\n"
        f"| jobrunner function on the stack {head}\n{rows(profile.own_inclusive)}\n"
    )


class Recording:
    """py-spy recording a process (and its children) until stopped."""

    def __init__(self, pid: int, out: Path, subprocesses: bool, rate: int = 500) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy not found (the bench extra installs it)")
        self.out = out
        argv = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                "--output", str(out), "--nonblocking", "--gil", "--full-filenames"]  # fmt: skip
        if subprocesses:
            argv.append("--subprocesses")
        self.log = out.with_suffix(".log")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> Counter[tuple[tuple[str, str], ...]]:
        # SIGINT: py-spy writes what it sampled and exits.
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return parse_raw(self.out.read_text()) if self.out.exists() else Counter()
