"""The verdict: a few sentences, each derived from the numbers of one report.

A sentence is said only when the numbers back it: a lesson the run did not show (the
machine's second core was busy, a job too short to tell) is left unsaid, not asserted.
"""

from __future__ import annotations

from services.core.formatting import format_mib
from services.core.vocabulary import WorkloadKind
from services.lab.metrics import TargetReport, cores_busy

THREAD_LIKE = ("threads", "threadpool", "gevent", "asyncio")
PROCESS_LIKE = ("prefork", "processpool")

# Threads that kept more cores than this busy at once ran in parallel: under the GIL,
# one process's threads never keep more than one busy.
PARALLEL_CORES = 1.3
# More than this, and one process's threads were not held to one core by the GIL (it
# lets them keep one busy, plus what the clock's granularity adds).
UNDER_ONE_GIL = 1.15
# Threads within this of processes' makespan scaled as processes did.
ABOUT_AS_FAST = 1.3
# A job whose own CPU time is at least this share of its run is not pure waiting.
COMPUTES_SHARE = 0.05
# gevent's jobs running this much longer than threads' is a lesson, not noise.
SLOWER_RUNS = 1.5


def _fastest(targets: list[TargetReport], names: tuple[str, ...]) -> TargetReport | None:
    chosen = [t for t in targets if t.target in names]
    return min(chosen, key=lambda t: t.makespan_s) if chosen else None


def _released_gil(
    workload: str, thread: TargetReport, process: TargetReport | None, cores: int
) -> str | None:
    """Threads that kept more than one core busy on CPU work: the work let go of the GIL
    (said only when they also came close to processes, if processes ran)."""
    busy = cores_busy(thread)
    if busy is None or thread.concurrency < 2 or busy < PARALLEL_CORES:
        return None
    cores = thread.cores or cores
    if process is None:
        compared = f"{thread.target} ran {thread.concurrency} jobs at once"
    else:
        ratio = thread.makespan_s / process.makespan_s
        if ratio >= ABOUT_AS_FAST:
            return None
        compared = (
            f"{thread.target} {1 / ratio:.1f}x faster than {process.target}"
            if ratio < 1
            else f"{thread.target} within {ratio:.2f}x of {process.target}"
        )
    return (
        f"{workload}: {compared}, keeping {busy:.1f} of {cores} cores busy with the threads "
        "of one process - the work released the GIL (C code that lets go of it, as "
        "hashlib does over large buffers), so threads scaled without the memory of "
        "processes; pure-Python CPU work such as cpu_hash holds the GIL, and only "
        "processes scale it."
    )


def _gil_lesson(workload: str, targets: list[TargetReport], cores: int) -> list[str]:
    """Processes against threads or greenlets, on the cores the process target had: its
    hosts' (a pool's workers may run elsewhere than the lab), else `cores`."""
    process, thread = _fastest(targets, PROCESS_LIKE), _fastest(targets, THREAD_LIKE)
    # The threads that kept the most cores busy, not the fastest: greenlets may finish
    # first on a loaded machine, and cannot show that the work let go of the GIL.
    busiest = max(
        (t for t in targets if t.target in THREAD_LIKE and cores_busy(t) is not None),
        key=lambda t: cores_busy(t) or 0.0,
        default=None,
    )
    released = busiest and _released_gil(workload, busiest, process, cores)
    if released:
        return [released]
    if not (process and thread):
        return []
    cores = process.cores or cores
    usable = process.usable_cores or min(process.concurrency, cores)
    ratio = thread.makespan_s / process.makespan_s
    lead = f"{workload}: {process.target}"
    busy = cores_busy(thread)
    if ratio >= 1.15 and busy is not None and busy > UNDER_ONE_GIL:
        # Processes won, but not because the threads shared one GIL: they kept more
        # than one core busy, which that GIL would not have let them.
        return [
            f"{lead} {ratio:.1f}x faster than {thread.target} on {cores} cores, though "
            f"{thread.target} kept {busy:.1f} cores busy - more than one process's threads "
            "can under the GIL, so the work released it at least in part."
        ]
    if ratio >= 1.15:
        # gevent's greenlets are one thread's: the lesson is said of what was compared.
        shared = (
            "greenlets share one thread and its GIL"
            if thread.target == "gevent"
            else ("threads share one GIL")
        )
        return [
            f"{lead} {ratio:.1f}x faster than {thread.target} on {cores} cores - "
            f"{shared}, processes each have their own."
        ]
    lead = f"{lead} only {ratio:.2f}x faster than {thread.target}"
    if cores == 1:
        return [f"{lead} - on 1 core, processes cannot run at the same time."]
    if process.concurrency == 1:
        return [f"{lead} - it ran one job at a time (concurrency 1)."]
    return [
        f"{lead}, reaching {process.efficiency:.0%} of its ideal with "
        f"{usable} of {cores} cores to use - the cores were busy "
        "with other work, or each job is too short for a process to pay."
    ]


def _memory_per_wait(fastest: TargetReport, targets: list[TargetReport]) -> str:
    """What overlapping that many waits cost in memory, against the other targets: peak
    RSS per concurrent job. Said only with the numbers to back it."""
    line = f"{fastest.target} overlaps the most waits ({fastest.concurrency} at once)"
    others = [t for t in targets if t is not fastest and t.peak_rss_bytes]
    if not fastest.peak_rss_bytes or not others:
        return line + "."

    def per_job(target: TargetReport) -> float:
        return (target.peak_rss_bytes or 0) / target.concurrency

    cheapest = min(others, key=per_job)
    line += (
        f" in {format_mib(fastest.peak_rss_bytes)} MB of peak RSS, "
        f"{format_mib(per_job(fastest))} MB per concurrent job"
    )
    if per_job(fastest) < per_job(cheapest):
        return (
            f"{line}; the next cheapest, {cheapest.target}, needs "
            f"{format_mib(per_job(cheapest))} MB "
            f"({cheapest.concurrency} at once in {format_mib(cheapest.peak_rss_bytes or 0)} MB)."
        )
    return f"{line}; {cheapest.target} needs less, {format_mib(per_job(cheapest))} MB per job."


def in_flight(target: TargetReport) -> int:
    """Jobs at once: as measured, else what the concurrency allowed (older reports)."""
    return target.peak_in_flight or min(target.concurrency, target.count)


def _isolation_cost(workload: str, targets: list[TargetReport]) -> str | None:
    """Peak RSS per concurrent job of each target, and what processes pay for running
    each job in one of their own. Said when processes and in-process targets were both
    measured."""
    measured = [t for t in targets if t.peak_rss_bytes]
    processes = [t for t in measured if t.target in PROCESS_LIKE]
    in_process = [t for t in measured if t.target not in PROCESS_LIKE]
    if not (processes and in_process):
        return None

    def per_job(target: TargetReport) -> float:
        return (target.peak_rss_bytes or 0) / in_flight(target)

    listed = ", ".join(
        f"{t.target} {format_mib(per_job(t))} MB ({in_flight(t)} at once)"
        for t in sorted(measured, key=per_job)
    )
    line = f"{workload}: peak RSS per concurrent job - {listed}"
    process, thread = min(processes, key=per_job), min(in_process, key=per_job)
    if per_job(process) > 1.1 * per_job(thread):
        return (
            f"{line}; isolation costs: {process.target} holds "
            f"{per_job(process) / per_job(thread):.1f}x the memory per concurrent job of "
            f"{thread.target}, each of its processes carrying an interpreter of its own, "
            f"where {thread.target} runs its jobs in one."
        )
    return line + "."


def _greenlets_behind(workload: str, targets: list[TargetReport]) -> str | None:
    """Where gevent falls behind threads on a job that computes between waits: greenlets
    switch only where one waits, so a job's CPU part delays every other one's wakeup."""
    by_name = {t.target: t for t in targets}
    gevent = by_name.get("gevent")
    threads = by_name.get("threads") or by_name.get("threadpool")
    if gevent is None or threads is None or threads.cpu_seconds_per_job is None:
        return None
    cpu = threads.cpu_seconds_per_job  # the job's own: gevent's includes the pool's work
    shortest_run = min(t.run_time_s.p50 for t in targets)
    if shortest_run <= 0 or cpu < COMPUTES_SHARE * shortest_run:
        return None  # it only waits: gevent's slower runs are the job system's own cost
    runs = gevent.run_time_s.p50 / max(threads.run_time_s.p50, 1e-9)
    finish = gevent.makespan_s / threads.makespan_s
    if runs < SLOWER_RUNS:
        return None
    later = f" and finished {finish:.1f}x later" if finish >= 1.1 else ""
    waiting = (in_flight(gevent) - 1) * cpu
    return (
        f"{workload}: gevent's jobs ran {runs:.1f}x as long as on {threads.target} "
        f"({gevent.run_time_s.p50:.3f} s against {threads.run_time_s.p50:.3f} s at the "
        f"median){later} - each job computes {cpu * 1000:.0f} ms before it waits, and "
        "greenlets switch only where one waits, so that CPU part runs to its end while every "
        f"other greenlet's wakeup waits: with {in_flight(gevent)} in flight, up to "
        f"{waiting:.2f} s of others' CPU. Threads are preempted every 5 ms instead."
    )


def _asyncio_ran(workload: str, targets: list[TargetReport]) -> str | None:
    """How the asyncio target ran the workload, and what that showed."""
    target = next((t for t in targets if t.target == "asyncio"), None)
    if target is None:
        return None
    if target.ran_as == "threads":
        return (
            f"asyncio ran {workload} in threads: it is not async def, so each job took one "
            f"of {target.concurrency} threads (loop.run_in_executor, as asyncio.to_thread "
            "does); the loop itself only waited for them."
        )
    if target.ran_as != "coroutines":
        return None
    line = f"asyncio ran {workload} natively, its coroutines on one event loop"
    if target.peak_in_flight == 1 and target.concurrency > 1 and target.count > 1:
        return (
            f"{line}, one at a time although {target.concurrency} were allowed - none "
            "awaited before it was done, so the loop could not overlap them: a coroutine "
            "that computes without awaiting is sequential code."
        )
    if target.peak_in_flight:
        return f"{line}, up to {target.peak_in_flight} at once."
    return line + "."


def verdict(
    workload: str, kind: WorkloadKind, count: int, targets: list[TargetReport], cores: int
) -> list[str]:
    if not targets:
        return []
    lines = []
    fastest = min(targets, key=lambda t: t.makespan_s)
    slowest = max(targets, key=lambda t: t.makespan_s)
    if len(targets) == 1:
        lines.append(
            f"{workload} x{count} on {fastest.target}: {fastest.throughput_per_s:.1f} jobs/s."
        )
    else:
        lines.append(
            f"{workload} x{count}: fastest is {fastest.target} "
            f"({fastest.throughput_per_s:.1f} jobs/s), "
            f"{slowest.makespan_s / fastest.makespan_s:.1f}x faster than {slowest.target}."
        )
    if kind == "cpu":
        # Pools against pools, local executors against local executors: like with like.
        for group in ("pool", "local"):
            lines += _gil_lesson(workload, [t for t in targets if t.kind == group], cores)
    else:
        parts = [
            f"{t.target} at {t.efficiency:.0%} of ideal (concurrency {t.concurrency})"
            for t in sorted(targets, key=lambda t: -t.efficiency)
        ]
        lines.append(f"{workload} x{count}: " + ", ".join(parts) + ".")
        lines += _said(_greenlets_behind(workload, targets))
    if kind == "io" and fastest.target in ("gevent", "asyncio"):
        lines.append(_memory_per_wait(fastest, targets))
    else:  # the memory story told once: by the waits above, or by isolation here
        lines += _said(_isolation_cost(workload, targets))
    lines += _said(_asyncio_ran(workload, targets))
    failing = [t for t in targets if t.errors]
    for target in failing:
        lines.append(f"{target.target}: {target.errors} of {target.count} jobs failed.")
    return lines


def _said(line: str | None) -> list[str]:
    return [line] if line else []
