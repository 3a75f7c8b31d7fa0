"""Issue 13's scale curve: jobrunner's throughput against worker processes (1, 2, 4; no-op
jobs) and against one worker's concurrency (8, 32, 100, 500; sleep(0.1) jobs), per pool,
sent in bulk (`POST /jobs/batch`), with the peers' best points of the same bench run.

Each point's repetitions run in a row with its workers (starting a pool of 500 greenlets
or four prefork workers takes longer than a run): the curve is a shape, not a race.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.peers.figures import BULK, jobrunner_system, median
from bench.peers.runner import Peers, Sample
from services.core.plotting import figure_bytes, plt

PROCESSES = (1, 2, 4)
CONCURRENCY = (8, 32, 100, 500)
# prefork's concurrency is processes of ~58 MiB each (bench/RESULTS.md): 100 would be
# 5.8 GiB and 500 more than this 24 GiB machine has, on two cores.
PREFORK_CONCURRENCY = (8, 32)
POOLS = ("threads", "prefork", "gevent")
COLORS = {"threads": "#1f77b4", "prefork": "#d62728", "gevent": "#2ca02c"}
SLEEP = 0.1
RATE_TICKS = (50, 100, 200, 500, 1_000, 2_000, 5_000)


def default_concurrency(pool: str) -> int:
    return {"threads": 8, "prefork": os.cpu_count() or 2, "gevent": 100}[pool]


def noop_jobs(quick: bool) -> int:
    return 600 if quick else 2_000


def sleep_jobs(concurrency: int, quick: bool) -> int:
    """Enough sleeps that the ideal makespan is 1 s (quick) or 2 s: each slot runs the
    same number of jobs at every concurrency."""
    return concurrency * round((1.0 if quick else 2.0) / SLEEP)


@dataclass
class Point:
    pool: str
    processes: int
    concurrency: int
    workload: str
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    @property
    def rate(self) -> float | None:
        return median([s.jobs_per_s for s in self.samples if s.ok and s.jobs_per_s])

    @property
    def ideal(self) -> float | None:
        if self.workload != "sleep":
            return None
        return self.processes * self.concurrency / SLEEP


@dataclass
class BestPeer:
    """A peer's best point of this run, to draw beside the curves."""

    label: str
    rate: float
    concurrency: int | None = None  # where it goes on the concurrency chart


def run_point(peers: Peers, point: Point, reps: int, quick: bool) -> Point:
    system = replace(
        jobrunner_system(point.pool, point.concurrency, (BULK,)), processes=point.processes
    )
    n = noop_jobs(quick) if point.workload == "noop" else sleep_jobs(point.concurrency, quick)
    peers.start_workers(system)
    try:
        peers.wait_ready(system)
        peers.measure(-1, system, BULK, point.workload, min(n, 200), SLEEP)
        for rep in range(reps):
            sample = peers.measure(rep, system, BULK, point.workload, n, SLEEP)
            point.samples.append(sample)
            print(sample.line(), flush=True)
    except Exception as exc:  # one point lost, the curve goes on
        point.error = f"{type(exc).__name__}: {exc}"[:200]
        print(f"  {system.label}: not measured: {point.error}")
    finally:
        peers.stop_workers(system)
    return point


def points_to_run(pools: tuple[str, ...] = POOLS) -> list[Point]:
    points = []
    for pool in pools:
        c = default_concurrency(pool)
        points += [Point(pool, p, c, "noop") for p in PROCESSES]
        levels = PREFORK_CONCURRENCY if pool == "prefork" else CONCURRENCY
        points += [Point(pool, 1, level, "sleep") for level in levels]
    return points


def table(points: list[Point]) -> str:
    out = [
        "| pool | worker processes | concurrency | workload | jobs/s (median) | % of ideal "
        "| runs |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for p in points:
        rate, ideal = p.rate, p.ideal
        share = f"{100 * rate / ideal:.0f} %" if rate and ideal else "-"
        cell = f"{rate:,.0f}" if rate else f"- ({p.error or 'no checked run'})"
        ok = sum(s.ok for s in p.samples)
        work = "no-op" if p.workload == "noop" else "sleep(0.1)"
        out.append(
            f"| {p.pool} | {p.processes} | {p.concurrency} | {work} | {cell} | {share} | "
            f"{ok}/{len(p.samples)} |"
        )
    return "\n".join(out)


def chart(points: list[Point], best: dict[str, BestPeer], path: Path, title: str) -> Path:
    """Left: no-op jobs/s against worker processes; right: sleep(0.1) jobs/s against one
    worker's concurrency (log-log), with the ideal; the peers' best points on both."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for pool in POOLS:
        by_proc = [p for p in points if p.pool == pool and p.workload == "noop" and p.rate]
        if by_proc:
            label = f"jobrunner {pool} (-c{by_proc[0].concurrency} each)"
            rates = [p.rate for p in by_proc]
            left.plot([p.processes for p in by_proc], rates, "o-", color=COLORS[pool], label=label)
        by_conc = [p for p in points if p.pool == pool and p.workload == "sleep" and p.rate]
        if by_conc:
            rates = [p.rate for p in by_conc]
            right.plot([p.concurrency for p in by_conc], rates, "o-", color=COLORS[pool],
                       label=f"jobrunner {pool}")  # fmt: skip
    for key, marker in (("noop one", "*"), ("noop bulk", "P")):
        if key in best:
            b = best[key]
            left.plot([1], [b.rate], marker, color="black", markersize=13, linestyle="none",
                      label=f"best peer, no-op {key.split()[1]}: {b.label}")  # fmt: skip
    for key, marker in (("sleep one", "*"), ("sleep bulk", "P")):
        if key in best and best[key].concurrency:
            b = best[key]
            label = f"best peer, {key.split()[1]}: {b.label}"
            right.plot([b.concurrency], [b.rate], marker, color="black", markersize=13,
                       linestyle="none", label=label)  # fmt: skip
    levels = sorted({p.concurrency for p in points if p.workload == "sleep"})
    if levels:
        right.plot(levels, [c / SLEEP for c in levels], ":", color="grey", label="ideal: c / 0.1 s")
    left.set_xticks(PROCESSES)
    left.set_xlabel("worker processes")
    left.set_ylabel("no-op jobs/s (bulk, enqueue -> result stored)")
    left.set_ylim(bottom=0)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    right.set_yticks(RATE_TICKS, [f"{t:,}" for t in RATE_TICKS])
    right.minorticks_off()
    right.set_xlabel("concurrency of one worker (threads, processes or greenlets)")
    right.set_ylabel("sleep(0.1) jobs/s (bulk)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_bytes(fig, "png"))
    return path
