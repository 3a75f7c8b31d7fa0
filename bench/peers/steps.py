"""The bench's steps for issue 13 (bench/side_by_side.py runs them): `peers` (the three
figures with every peer), `scale` (jobrunner's scale curve, drawn with the peers' best
points of the same run) and `profile` (py-spy on jobrunner's workers, no-op jobs).

Each step adds its target rows to the bench's table and a markdown section to the run's
record; what `scale` draws next to its curves comes from `peers` when both run.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peers import ceiling, chart, profile, scale
from bench.peers.figures import (
    BULK,
    CALLS,
    ONE,
    FigureRun,
    best_peer,
    commands_table,
    figures,
    jobrunner_system,
    libraries_from,
    median,
    repetitions,
    run_figure,
    summary_table,
    target_rows,
)
from bench.peers.runner import TITLES, Peers, tree_cpu_times
from bench.peers.venvs import freeze, venv_dir
from bench.report import Row
from services.devstack.compose import PROJECT_ROOT

# Repetitions of every peer figure: medians of 3, as issue 13 measured.
REPS = 3
# Where a run draws its scale chart: beside the run's table, ignored by git.
OUT = Path(__file__).resolve().parents[1] / "out"


@dataclass
class Session:
    """What the steps of one bench run share."""

    libraries: list[str] = field(default_factory=lambda: libraries_from(""))
    sections: list[str] = field(default_factory=list)
    best: dict[str, scale.BestPeer] = field(default_factory=dict)
    drawn: Path | None = None


SESSION = Session()


def choose(peers_option: str) -> None:
    """A new session for a run, with the libraries `--peers` names (all if empty)."""
    global SESSION
    SESSION = Session(libraries=libraries_from(peers_option))


@contextmanager
def own_stack(b: Any, name: str) -> Iterator[Any]:
    """A jobrunner stack of the step's own (its Redis, its API), as every peer has its
    own Redis: the jobs the other steps leave behind (100,000 listed ones, batches nobody
    ran) are not in this one's indexes, and its reconciler finds none of them to send."""
    from bench.harness import Bench, BenchStack

    folder = b.workdir / name
    stack = BenchStack(folder)
    try:
        stack.start_redis(fsync="everysec")
        stack.start_api(host="127.0.0.1", port=stack.api_port)
        stack.wait_api_ready()
        yield Bench(b.quick, folder, stack)
    finally:
        stack.stop()
        shutil.rmtree(folder / "redis", ignore_errors=True)  # every job of the step


def how_they_ran(peers: Peers) -> str:
    """Each library's version and each system's worker command, for the record."""
    lines = []
    for name, library in peers.libraries.items():
        ready = library.producer.ready
        home = str(Path.home())
        where = (
            "jobrunner's .venv"
            if name in ("jobrunner", "celery")
            else str(venv_dir(name)).replace(home, "~")
        )
        pinned = ""
        if name not in ("jobrunner", "celery"):
            # The library and its Redis client; every pin is in bench/peers/versions.py.
            keys = (f"{name}==", "taskiq-redis==", "redis==", "hiredis==")
            held = [p for p in freeze(library.python) if p.lower().startswith(keys)]
            pinned = f" ({', '.join(held)})"
        calls = " / ".join(CALLS[name])
        lines.append(
            f"- {TITLES[name]} {ready.get('version', '?')}, {where}{pinned}; sent with {calls}"
        )
    return "\n".join(lines)


def worker_commands(peers: Peers, runs: list[FigureRun]) -> str:
    home, root = str(Path.home()), f"{PROJECT_ROOT}/"
    seen, lines = set(), []
    for run in runs:
        for system in run.figure.systems:
            if system.key in seen or system.library not in peers.libraries:
                continue
            seen.add(system.key)
            argv, _ = peers.worker_argv(system)
            text = " ".join(argv).replace(root, "").replace(home, "~")
            lines.append(f"- {system.label}: `{text}`")
    return "\n".join(lines)


def bench_peers(b: Any) -> None:
    """Issue 13's three figures with every peer, their target rows and their record."""
    runs: list[FigureRun] = []
    with own_stack(b, "peers") as own:
        peers = Peers(own, SESSION.libraries)
        try:
            run_peers(peers, runs, own.quick)
            versions, commands = how_they_ran(peers), worker_commands(peers, runs)
        finally:
            peers.stop()
    for run in runs:
        b.rows += target_rows(run)
    parts = ["## jobrunner beside the peers (issue 13)\n", versions, "\nWorkers:\n", commands]
    for run in runs:
        parts.append(f"\n### {run.figure.title}\n\n{summary_table(run)}\n")
        if run.figure.name == "noop":
            parts.append(f"Redis commands per job, by command:\n\n{commands_table(run)}\n")
        parts.append(f"Every repetition:\n\n```\n{repetitions(run)}\n```\n")
    section = "\n".join(parts)
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    title = f"jobrunner beside the other Python job queues ({stamp} UTC, medians of {REPS})"
    try:
        section += f"\nChart: {chart.draw_run(section, OUT / 'peers.png', title)}\n"
    except chart.NoPeersTable as exc:  # a figure not run: a chart is not worth the others
        section += f"\nChart: not drawn ({exc})\n"
    SESSION.sections.append(section)


def run_peers(peers: Peers, runs: list[FigureRun], quick: bool) -> None:
    peers.start()
    for figure in figures(SESSION.libraries):
        if not figure.systems:
            continue
        print(f"  -- {figure.title}", flush=True)
        run = run_figure(peers, figure, REPS, quick)
        runs.append(run)
        remember_best(run)


def remember_best(run: FigureRun) -> None:
    workload = run.figure.workload
    if run.figure.name == "sleep500":
        return
    for mode in (ONE, BULK):
        best = best_peer(run, mode)
        if best:
            system, values = best
            SESSION.best[f"{workload} {mode}"] = scale.BestPeer(
                f"{system.label}, {median(values):,.0f} jobs/s", median(values) or 0.0,
                system.concurrency,
            )  # fmt: skip


def bench_scale(b: Any) -> None:
    """jobrunner's throughput against worker processes and concurrency, drawn."""
    points = scale.points_to_run()
    with own_stack(b, "scale") as own:
        peers = Peers(own, ["jobrunner"])
        try:
            peers.start()
            for point in points:
                print(
                    f"  -- {point.pool} x{point.processes} -c{point.concurrency} {point.workload}"
                )
                scale.run_point(peers, point, 2 if b.quick else REPS, b.quick)
        finally:
            peers.stop()
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    title = (
        f"jobrunner's scale curve ({stamp} UTC, {os.cpu_count()} cores"
        f"{', --quick' if b.quick else ''}); black marks: the best peer of the same run"
    )
    SESSION.drawn = scale.chart(points, SESSION.best, OUT / "scale.png", title)
    peers_note = (
        "\n".join(f"- best peer, {key}: {p.label}" for key, p in SESSION.best.items())
        or "- (the peers step did not run: no peer points on the chart)"
    )
    SESSION.sections.append(
        "## Scale curve (issue 13)\n\nSent in bulk (`POST /jobs/batch`); no-op against worker "
        "processes at each pool's default concurrency, sleep(0.1) against one worker's "
        f"concurrency.\n\n{scale.table(points)}\n\n{peers_note}\n\nChart: {SESSION.drawn}\n"
    )


def bench_profile(b: Any) -> None:
    """py-spy on each pool's worker over a no-op run sent one job a call."""
    parts = ["## Where a jobrunner worker's CPU goes on no-op jobs (py-spy)\n"]
    with own_stack(b, "profile") as own:
        peers = Peers(own, ["jobrunner"])
        try:
            peers.start()
            for pool in scale.POOLS:
                parts.append(profile_pool(peers, pool, b))
        finally:
            peers.stop()
    SESSION.sections.append("\n".join(parts))


def profile_pool(peers: Peers, pool: str, b: Any) -> str:
    n = 1_000 if b.quick else 3_000
    system = jobrunner_system(pool, scale.default_concurrency(pool), (ONE,))
    out = b.workdir / f"py-spy-{pool}.txt"
    peers.start_workers(system)
    try:
        peers.wait_ready(system)
        peers.measure(-1, system, ONE, "noop", 200)
        worker = peers.workers[system][0]
        recording = profile.Recording(worker.pid, out, subprocesses=pool == "prefork")
        time.sleep(1.0)  # py-spy attaches
        before = tree_cpu_times(worker.pid)
        sample = peers.measure(0, system, ONE, "noop", n)
        after = tree_cpu_times(worker.pid)
        stacks = recording.stop()
    finally:
        peers.stop_workers(system)
    print(sample.line(), flush=True)
    user, kernel = ((end - start) * 1000 / n for end, start in zip(after, before, strict=True))
    b.rows.append(Row(
        f"worker CPU per no-op job while profiled, jobrunner {pool}", "reported", "ms",
        jobrunner=[sample.worker_cpu_ms] if sample.worker_cpu_ms else [],
        note=f"py-spy --gil at 500 Hz; stacks in {out.name}",
    ))  # fmt: skip
    title = f"{system.label}, {n:,} no-ops one by one, profiled"
    return profile.markdown(title, profile.summarize(stacks), user, kernel)


STEPS = {
    "peers": bench_peers, "ceiling": ceiling.bench_ceiling, "scale": bench_scale,
    "profile": bench_profile,
}  # fmt: skip
