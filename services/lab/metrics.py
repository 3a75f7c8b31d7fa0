"""What an experiment measures per target, from the timestamps of each job.

For a pool the timestamps are the worker's (submitted on the API, started and finished in
the worker); for a local executor, the same stamps taken around the same function.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from services.core.vocabulary import WorkloadKind


class Percentiles(BaseModel):
    p50: float
    p95: float
    p99: float


class TargetReport(BaseModel):
    target: str = Field(..., description="A pool name, or a local executor name.")
    kind: Literal["pool", "local"]
    count: int
    errors: int
    concurrency: int = Field(..., description="Slots that ran jobs at once.")
    makespan_s: float = Field(..., description="First submission to last finish.")
    throughput_per_s: float
    latency_s: Percentiles = Field(..., description="Submission to finish.")
    queue_wait_s: Percentiles = Field(..., description="Submission to start.")
    run_time_s: Percentiles = Field(..., description="Start to finish.")
    cpu_seconds_per_job: float | None = Field(
        ...,
        description="The job's own CPU time; on gevent, the pool processes' CPU / jobs "
        "(None if a worker of the pool did not report its CPU).",
    )
    peak_in_flight: int | None = Field(
        None,
        description="The most jobs that ran at once (between their start and finish), "
        "whatever the concurrency allowed. (None in reports stored before it was recorded.)",
    )
    ran_as: str | None = Field(
        None,
        description="How the target called the workload, where it is not a plain call: "
        "on asyncio, 'coroutines' (an async def workload, awaited on one event loop), "
        "'async twin' (a built-in's asyncio version) or 'threads' (a plain function, "
        "handed to threads as asyncio.to_thread does: it is not async def); elsewhere, "
        "'event loop per thread' for an async def workload.",
    )
    cores_busy: float | None = Field(
        None,
        description="count x cpu_seconds_per_job / makespan: the cores the jobs' own CPU "
        "kept busy on average. About 1 at most for one process's threads under the GIL; up "
        "to the cores for processes, or for work that releases the GIL.",
    )
    processes: int | None = Field(
        None,
        description="Distinct processes (pids) that ran the jobs: one for threads, "
        "greenlets and coroutines; up to the concurrency for process pools.",
    )
    peak_rss_bytes: int | None = Field(
        None,
        description="Peak during this target's run of the summed RSS of the processes that "
        "ran its jobs: the pool's workers with their children, or the lab process (with a "
        "process pool's children). For a pool, each worker samples itself and the "
        "workers' peaks are added up, wherever they run; None if one of them did not "
        "report.",
    )
    pool_cpu_seconds: float | None = Field(
        None,
        description="CPU seconds (user + system) the pool's worker processes and their "
        "children used during this target's run, as the workers measured themselves: "
        "the jobs' own CPU and the job system's. None for a local executor, or if a "
        "worker did not report.",
    )
    cores: int | None = Field(
        None,
        description="Cores of the hosts that ran it: the lab's for a local executor; for a "
        "pool, those of its workers' hosts, each host counted once. (None in reports "
        "stored before it was recorded.)",
    )
    usable_cores: int | None = Field(
        None,
        description="Cores it could keep busy at once, the CPU-bound ideal's divisor: on "
        "each host the fewer of its cores and the target's concurrency there, summed.",
    )
    ideal_makespan_s: float
    efficiency: float = Field(..., description="ideal / makespan, in (0, 1]: for display.")
    efficiency_raw: float | None = Field(
        None,
        description="ideal / makespan, not clamped: a hair above 1 is clock granularity; "
        "clearly above 1 means the ideal was not a bound. (None in reports stored before "
        "it was recorded.)",
    )


@dataclass(frozen=True)
class JobTiming:
    submitted_at: float
    started_at: float
    finished_at: float
    cpu_seconds: float | None  # None where it cannot be told per job (greenlets)
    failed: bool
    pid: int | None = None  # the process that ran it


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def percentiles(values: list[float]) -> Percentiles:
    return Percentiles(
        p50=round(percentile(values, 50), 6),
        p95=round(percentile(values, 95), 6),
        p99=round(percentile(values, 99), 6),
    )


def ideal_makespan(
    kind: WorkloadKind, count: int, concurrency: int, job_seconds: float, cores: int
) -> float:
    """The least time `count` jobs can take on `concurrency` slots.

    I/O-bound: the waits overlap, `concurrency` at a time: ceil(count / concurrency)
    rounds of one job's duration. CPU-bound: the CPU work cannot run on more cores than
    there are, whatever the concurrency: count x CPU time / min(concurrency, cores).
    For a pool over several hosts, `cores` is pool_usable_cores(…) of its hosts.
    """
    if kind == "io":
        return math.ceil(count / concurrency) * job_seconds
    return count * job_seconds / min(concurrency, cores)


def pool_usable_cores(per_host: dict[str, tuple[int, int]]) -> int:
    """The cores a pool can keep busy at once, from (its concurrency there, the host's
    cores) per host.

    Neither the lab's cores nor the hosts' summed cores: a CPU-bound job runs where its
    slot is, so a host gives the pool no more cores than it has, and no more than the
    pool's slots there can use. Two hosts of 2 cores each, with 2 prefork slots on each,
    run 4 jobs at once; with 8 slots on one and 1 on the other, 3 (2 + 1), not
    min(9, 4).
    """
    return sum(min(concurrency, cores) for concurrency, cores in per_host.values())


def peak_in_flight(timings: list[JobTiming]) -> int:
    """The most jobs running at once: a sweep over starts and finishes (a finish at the
    very instant of a start comes first, so back-to-back jobs do not count as two)."""
    events = sorted([(t.started_at, 1) for t in timings] + [(t.finished_at, -1) for t in timings])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def cores_busy(report: TargetReport) -> float | None:
    """On average, how many cores the jobs' own CPU kept busy over the makespan: about 1
    at most for threads under the GIL, up to the cores for processes or for work that
    releases the GIL. None where a job's CPU time is not known."""
    if report.cpu_seconds_per_job is None or report.makespan_s <= 0:
        return None
    return report.count * report.cpu_seconds_per_job / report.makespan_s


def measure(
    target: str,
    kind: Literal["pool", "local"],
    timings: list[JobTiming],
    concurrency: int,
    ideal_s: float,
    peak_rss_bytes: int | None,
    *,
    cores: int | None = None,
    usable_cores: int | None = None,
    pool_cpu_seconds: float | None = None,
    ran_as: str | None = None,
) -> TargetReport:
    makespan = max(t.finished_at for t in timings) - min(t.submitted_at for t in timings)
    makespan = max(makespan, 1e-9)
    raw = ideal_s / makespan if ideal_s > 0 else 1.0
    cpu = [t.cpu_seconds for t in timings if t.cpu_seconds is not None]
    busy = len(timings) * statistics.fmean(cpu) / makespan if cpu else None
    return TargetReport(
        target=target,
        kind=kind,
        count=len(timings),
        errors=sum(t.failed for t in timings),
        concurrency=concurrency,
        makespan_s=round(makespan, 6),
        throughput_per_s=round(len(timings) / makespan, 3),
        latency_s=percentiles([t.finished_at - t.submitted_at for t in timings]),
        queue_wait_s=percentiles([t.started_at - t.submitted_at for t in timings]),
        run_time_s=percentiles([t.finished_at - t.started_at for t in timings]),
        cpu_seconds_per_job=round(statistics.fmean(cpu), 6) if cpu else None,
        cores_busy=round(busy, 3) if busy is not None else None,
        # Never more than the slots: stamps of jobs on hosts whose clocks differ a little
        # can overlap where the jobs did not.
        peak_in_flight=min(peak_in_flight(timings), concurrency),
        ran_as=ran_as,
        processes=len({t.pid for t in timings if t.pid is not None}) or None,
        peak_rss_bytes=peak_rss_bytes,
        pool_cpu_seconds=pool_cpu_seconds,
        cores=cores,
        usable_cores=usable_cores,
        ideal_makespan_s=round(ideal_s, 6),
        # Clock granularity can put a tiny job a hair under its bound: the displayed
        # efficiency stays a fraction, the raw ratio shows by how much it was beaten.
        efficiency=round(min(1.0, raw), 4),
        efficiency_raw=round(raw, 4),
    )
