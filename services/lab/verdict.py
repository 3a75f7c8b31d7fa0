"""The verdict: a few sentences, each derived from the numbers of one report."""

from __future__ import annotations

from services.core.formatting import format_mib
from services.core.vocabulary import WorkloadKind
from services.lab.metrics import TargetReport

THREAD_LIKE = ("threads", "threadpool", "gevent", "asyncio")
PROCESS_LIKE = ("prefork", "processpool")


def _fastest(targets: list[TargetReport], names: tuple[str, ...]) -> TargetReport | None:
    chosen = [t for t in targets if t.target in names]
    return min(chosen, key=lambda t: t.makespan_s) if chosen else None


def _gil_lesson(workload: str, targets: list[TargetReport], cores: int) -> list[str]:
    """Processes against threads or greenlets, on the cores the process target had: its
    hosts' (a pool's workers may run elsewhere than the lab), else `cores`."""
    process, thread = _fastest(targets, PROCESS_LIKE), _fastest(targets, THREAD_LIKE)
    if not (process and thread):
        return []
    cores = process.cores or cores
    usable = process.usable_cores or min(process.concurrency, cores)
    ratio = thread.makespan_s / process.makespan_s
    lead = f"{workload}: {process.target}"
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
        if fastest.target in ("gevent", "asyncio"):
            lines.append(_memory_per_wait(fastest, targets))
    failing = [t for t in targets if t.errors]
    for target in failing:
        lines.append(f"{target.target}: {target.errors} of {target.count} jobs failed.")
    return lines
