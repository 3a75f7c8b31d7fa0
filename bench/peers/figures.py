"""Issue 13's figures: jobrunner beside Huey, Dramatiq, Taskiq, arq, RQ and stock Celery.

Three figures, each system with its own worker (one process; RQ's concurrency is its
processes), all of a figure's workers up at once and the systems run in turn, the order
rotated every repetition, so drift on this shared machine spreads over all of them:

- no-op: 5,000 jobs, peers at concurrency 8 (stock Celery threads -c8, as issue 4),
  jobrunner's three pools at their profiles' concurrency;
- sleep(0.1) x 2,000 at concurrency 100 (gevent and threads for jobrunner);
- sleep(0.1) x 2,000 at concurrency 500, jobrunner only (its target is a share of ideal).

Each system is sent its jobs one call a job from one producer, and through its bulk path
where it has one. Every run is checked: each job's value read back through the library's
own result store. The targets are rows of bench/report.py's table: ratios to the best peer
of the same run (its median), to the ideal, or to stock Celery.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.peers.runner import LIBRARIES, PEERS, Peers, Sample, System
from bench.report import Row

ONE, CLIENT, BULK = "one", "client", "bulk"
MODE_TITLES = {ONE: "one by one", CLIENT: "one by one, Client.submit", BULK: "bulk"}
# What each library's one-by-one and bulk calls are (bench/peers/<library>/producer.py).
CALLS = {
    "jobrunner": ("POST /jobs, one kept-alive connection (or Client.submit)",
                  "POST /jobs/batch, 1,000 a request"),
    "celery": ("task.apply_async()",
               "apply_async on one producer in Producer.batch(), 1,000 a pipeline"),
    "huey": ("task(...)", "task.map(...) (one LPUSH a job)"),
    "dramatiq": ("actor.send(...)", "group(...).run() (one round trip a message)"),
    "taskiq": ("await task.kiq(...)", "none"),
    "arq": ("await pool.enqueue_job(...)", "none"),
    "rq": ("queue.enqueue(...)", "queue.enqueue_many(...) (one pipeline)"),
}  # fmt: skip
# Each system's run is cut to what it sends in this long at the rate its warm-up run
# showed (never below PROBE jobs): RQ forks a process a job, and at 13 jobs/s on a loaded
# machine 5,000 jobs would be six minutes a run. The table says where it was cut.
BUDGET_SECONDS = {False: 60.0, True: 20.0}
PROBE = {False: 200, True: 100}


def peer_systems(
    kind_for: dict[str, str], concurrency: int, libraries: Iterable[str]
) -> list[System]:
    modes = {"taskiq": (ONE,), "arq": (ONE,)}  # no bulk path
    return [
        System(lib, kind_for.get(lib, "threads"), concurrency, modes.get(lib, (ONE, BULK)))
        for lib in libraries
        if lib in PEERS or lib == "celery"
    ]


def jobrunner_system(pool: str, concurrency: int, modes: tuple[str, ...]) -> System:
    return System("jobrunner", pool, concurrency, modes, (("pool", pool),))


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    workload: str
    n: dict[bool, int]  # quick -> jobs a run
    systems: tuple[System, ...]
    seconds: float = 0.1

    def ideal(self, system: System) -> float | None:
        """Jobs/s if every slot were always busy sleeping, nothing else costing time."""
        if self.workload != "sleep":
            return None
        return system.concurrency * system.processes / self.seconds

    def sending_allows(self, system: System, n: int, send_seconds: float) -> float | None:
        """About the most of the ideal a run reaches once its producer took `send_seconds`
        to send `n` jobs, however fast the worker: the last job, sent at the end, sleeps
        after it. (Its sending ends when the last call returns; the worker may have taken
        that job a moment before.) A producer slower than the ideal rate caps the run."""
        ideal = self.ideal(system)
        if ideal is None:
            return None
        ideal_seconds = n / ideal
        return ideal_seconds / max(send_seconds + self.seconds, ideal_seconds)


ASYNC_KINDS = {"taskiq": "asyncio", "arq": "asyncio", "rq": "processes"}
# The figures' titles: the headings of their tables in a run's record, which
# bench/peers/chart.py reads back.
NOOP_TITLE = "no-op, enqueue -> result stored and read back"
SLEEP100_TITLE = "sleep(0.1) at concurrency 100"
# Issue 13's targets: no-op throughput as a multiple of the best peer's, sent each way
# (Client.submit is one by one), and sleep(0.1)'s share of the ideal per figure.
NOOP_TARGETS = {ONE: 1.0, CLIENT: 1.0, BULK: 1.5}
SLEEP_TARGETS = {"sleep100": 0.9, "sleep500": 0.6}


def figures(libraries: list[str]) -> list[Figure]:
    cores = os.cpu_count() or 2
    jr = "jobrunner" in libraries
    noop = [
        *(
            [jobrunner_system(pool, c, (ONE, CLIENT, BULK))
             for pool, c in (("threads", 8), ("prefork", cores), ("gevent", 100))]
            if jr else []
        ),
        *peer_systems(ASYNC_KINDS, 8, libraries),
    ]  # fmt: skip
    sleep100 = [
        *([jobrunner_system(p, 100, (ONE, BULK)) for p in ("gevent", "threads")] if jr else []),
        *peer_systems({**ASYNC_KINDS, "celery": "gevent"}, 100, libraries),
    ]
    sleep500 = [jobrunner_system(p, 500, (ONE, BULK)) for p in ("gevent", "threads")] if jr else []
    return [
        Figure("noop", NOOP_TITLE, "noop",
               {False: 5_000, True: 600}, tuple(noop)),
        Figure("sleep100", SLEEP100_TITLE, "sleep",
               {False: 2_000, True: 600}, tuple(sleep100)),
        Figure("sleep500", "sleep(0.1) at concurrency 500", "sleep",
               {False: 2_000, True: 1_000}, tuple(sleep500)),
    ]  # fmt: skip


# -- running a figure ----------------------------------------------------------------------


@dataclass
class FigureRun:
    figure: Figure
    samples: list[Sample] = field(default_factory=list)
    n_used: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # system -> why it was not run

    def values(self, system: System, mode: str, attr: str = "jobs_per_s") -> list[float]:
        return [
            getattr(s, attr)
            for s in self.samples
            if s.system == system.key and s.mode == mode and s.ok and s.rep >= 0
        ]


def rotated(items: list[System], rep: int) -> list[System]:
    """The order of the systems in repetition `rep`: each starts first once in turn."""
    if not items:
        return items
    k = rep % len(items)
    return items[k:] + items[:k]


def budgeted_n(n: int, probe: Sample, budget: float, floor: int) -> int:
    """Jobs a run of a system gets: `n`, or what it sends within `budget` seconds at the
    rate its probe showed, rounded down to hundreds (never below `floor`)."""
    if probe.jobs_per_s is None or probe.jobs_per_s * budget >= n:
        return n
    return max(floor, int(probe.jobs_per_s * budget) // 100 * 100)


def run_figure(peers: Peers, figure: Figure, reps: int, quick: bool) -> FigureRun:
    run = FigureRun(figure)
    n = figure.n[quick]
    started: list[System] = []
    try:
        for system in figure.systems:
            peers.start_workers(system)
            try:
                peers.wait_ready(system)
                probe = peers.measure(
                    -1, system, ONE, figure.workload, min(n, PROBE[quick]), figure.seconds
                )
                if BULK in system.modes:  # its first batch loads scripts and templates
                    peers.measure(-1, system, BULK, figure.workload, 50, figure.seconds)
            except Exception as exc:  # a peer that does not start loses its rows only
                run.failed[system.key] = f"{type(exc).__name__}: {exc}"[:300]
                print(f"  {system.label}: not measured: {run.failed[system.key]}")
                peers.stop_workers(system)
                continue
            run.n_used[system.key] = budgeted_n(n, probe, BUDGET_SECONDS[quick], PROBE[quick])
            started.append(system)
        for rep in range(reps):
            modes = [ONE, CLIENT, BULK] if rep % 2 == 0 else [BULK, CLIENT, ONE]
            for mode in modes:
                for system in rotated(started, rep):
                    if mode not in system.modes:
                        continue
                    sample = peers.measure(
                        rep, system, mode, figure.workload, run.n_used[system.key],
                        figure.seconds,
                    )  # fmt: skip
                    run.samples.append(sample)
                    print(sample.line(), flush=True)
    finally:
        for system in started:
            peers.stop_workers(system)
    return run


# -- what a figure says --------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if value < 100 else f"{value:,.0f}"


def best_peer(run: FigureRun, mode: str) -> tuple[System, list[float]] | None:
    """The peer (not jobrunner) with the highest median jobs/s sent `mode`'s way; for
    bulk, a peer without a bulk path stands with its one-by-one runs (that is how its
    users send many)."""
    best: tuple[System, list[float]] | None = None
    for system in run.figure.systems:
        if system.library == "jobrunner":
            continue
        own = mode if mode in system.modes else ONE
        values = run.values(system, own)
        if values and (best is None or median(values) > median(best[1])):  # type: ignore[operator]
            best = (system, values)
    return best


def summary_table(run: FigureRun) -> str:
    """One row per system and way of sending: medians of the checked runs."""
    fig = run.figure
    head = (
        "| system | sent | jobs/s (median) | % of ideal | sending, jobs/s | "
        "% of ideal the sending allows | worker CPU ms/job | "
        "client CPU ms/job | Redis cmds/job | runs checked | jobs a run |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    )
    out = [head]
    for system in fig.systems:
        if system.key in run.failed:
            out.append(f"| {system.label} | - | not measured: {run.failed[system.key]} "
                       "| | | | | | | | |")  # fmt: skip
            continue
        for mode in system.modes:
            runs = [s for s in run.samples if s.system == system.key and s.mode == mode]
            rate = median(run.values(system, mode))
            ideal = fig.ideal(system)
            share = f"{100 * rate / ideal:.0f} %" if rate and ideal else "-"
            sent = [(s.n, s.send_seconds) for s in runs if s.ok and s.send_seconds and s.rep >= 0]
            sending = median([n / seconds for n, seconds in sent])
            allows = median([fig.sending_allows(system, n, seconds) or 0.0
                             for n, seconds in sent]) if ideal else None  # fmt: skip
            call = CALLS[system.library][1 if mode == BULK else 0]
            if mode == CLIENT:
                call = "jobrunner.Client.submit"
            elif system.library == "jobrunner" and mode == ONE:
                call = "POST /jobs"
            out.append(
                f"| {system.label} | {MODE_TITLES[BULK if mode == BULK else ONE]}: {call} | "
                f"{fmt(rate, 0)} | {share} | {fmt(sending, 0)} | "
                f"{f'{100 * allows:.0f} %' if allows else '-'} | "
                f"{fmt(median(run.values(system, mode, 'worker_cpu_ms')))} | "
                f"{fmt(median(run.values(system, mode, 'client_cpu_ms')))} | "
                f"{fmt(median(run.values(system, mode, 'commands_per_job')))} | "
                f"{sum(s.ok for s in runs)}/{len(runs)} | {run.n_used.get(system.key, '-')} |"
            )
    return "\n".join(out)


def commands_table(run: FigureRun, floor: float = 0.05) -> str:
    """Redis commands per job by command, for jobrunner's pools and stock Celery (the
    systems the commands target compares), from each one's first checked run: what the
    count is made of (commands inside Lua scripts are counted one by one, as Redis
    counts them)."""
    columns: list[tuple[str, dict[str, int], int]] = []
    for system in run.figure.systems:
        if system.library not in ("jobrunner", "celery"):
            continue
        for mode in (ONE, BULK):
            runs = [s for s in run.samples if s.system == system.key and s.mode == mode]
            first = next((s for s in runs if s.ok and s.rep >= 0), None)
            if first:
                columns.append((f"{system.key} {mode}", first.by_command, first.n))
    if not columns:
        return ""
    names = sorted(
        {name for _, counts, n in columns for name, c in counts.items() if c / n >= floor}
    )
    head = "| command | " + " | ".join(title for title, _, _ in columns) + " |"
    out = [head, "| --- |" + " ---: |" * len(columns)]
    for name in names:
        cells = [fmt(counts.get(name, 0) / n) for _, counts, n in columns]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [fmt(sum(counts.values()) / n) for _, counts, n in columns]
    out.append("| **all** | " + " | ".join(totals) + " |")
    return "\n".join(out)


def target_rows(run: FigureRun) -> list[Row]:
    """Issue 13's targets for this figure, as rows of the bench's table."""
    fig, rows = run.figure, []
    jr = [s for s in fig.systems if s.library == "jobrunner"]
    if fig.name == "noop":
        celery = next((s for s in fig.systems if s.library == "celery"), None)
        for mode, times in NOOP_TARGETS.items():
            target = f">= {times:.1f}x"
            best = best_peer(run, BULK if mode == BULK else ONE)
            note = (
                f"'stock' column = best peer, {best[0].label}"
                + (" (its bulk path, or one by one where it has none)" if mode == BULK else "")
                if best
                else "no peer measured"
            )
            for system in jr:
                rows.append(Row(
                    f"no-op {MODE_TITLES[mode]}, jobrunner {system.kind} -c{system.concurrency} "
                    "vs best peer", target, "jobs/s",
                    stock=list(best[1]) if best else [], jobrunner=run.values(system, mode),
                    note=note,
                ))  # fmt: skip
        for mode in (ONE, BULK):
            for system in jr:
                rows.append(Row(
                    f"worker CPU per no-op job, jobrunner {system.kind}, {MODE_TITLES[mode]}",
                    "<= 0.5 ms", "ms", jobrunner=run.values(system, mode, "worker_cpu_ms"),
                    note="CPU seconds of the worker's processes over the run / jobs",
                ))  # fmt: skip
        for mode in (ONE, BULK):
            for system in jr:
                rows.append(Row(
                    f"Redis commands per no-op job, jobrunner {system.kind} vs stock Celery, "
                    f"{MODE_TITLES[mode]}", "<= 0.6x", "cmds",
                    stock=run.values(celery, mode, "commands_per_job") if celery else [],
                    jobrunner=run.values(system, mode, "commands_per_job"),
                    note="'stock' column = stock Celery threads -c8, sent the same way",
                ))  # fmt: skip
        return rows
    share = f">= {SLEEP_TARGETS[fig.name]:.1f}x"
    for mode in (ONE, BULK):
        best = best_peer(run, mode)
        for system in jr:
            ideal = fig.ideal(system) or 0.0
            note = f"'stock' column = the ideal, {system.concurrency} / {fig.seconds:g} s"
            if best:
                note += f"; best peer {best[0].label}: {100 * median(best[1]) / ideal:.0f} %"  # type: ignore[operator]
            rows.append(Row(
                f"{run.n_used.get(system.key, fig.n[False]):,} x sleep(0.1), jobrunner "
                f"{system.kind} -c{system.concurrency}, {MODE_TITLES[mode]}, share of ideal",
                share, "jobs/s", stock=[ideal], jobrunner=run.values(system, mode), note=note,
            ))  # fmt: skip
    return rows


def repetitions(run: FigureRun) -> str:
    return "\n".join(s.line() for s in run.samples)


def libraries_from(option: str) -> list[str]:
    """`--peers huey,rq` -> jobrunner, celery and those; empty -> every library."""
    chosen = [name.strip() for name in option.split(",") if name.strip()]
    unknown = set(chosen) - set(LIBRARIES)
    if unknown:
        raise ValueError(f"unknown peers {sorted(unknown)}; known: {', '.join(LIBRARIES)}")
    if not chosen:
        return list(LIBRARIES)
    return [lib for lib in LIBRARIES if lib in {"jobrunner", "celery", *chosen}]
