"""The verdict: a few sentences, each derived from the numbers of one report."""

from __future__ import annotations

from services.report import TargetReport, WorkloadKind

THREAD_LIKE = ("threads", "threadpool", "gevent", "asyncio")
PROCESS_LIKE = ("prefork", "processpool")


def _fastest(targets: list[TargetReport], names: tuple[str, ...]) -> TargetReport | None:
    chosen = [t for t in targets if t.target in names]
    return min(chosen, key=lambda t: t.makespan_s) if chosen else None


def verdict(
    workload: str, kind: WorkloadKind, count: int, targets: list[TargetReport]
) -> list[str]:
    if not targets:
        return []
    lines = []
    fastest = min(targets, key=lambda t: t.makespan_s)
    slowest = max(targets, key=lambda t: t.makespan_s)
    lines.append(
        f"{workload} x{count}: fastest is {fastest.target} "
        f"({fastest.throughput_per_s:.1f} jobs/s), "
        f"{slowest.makespan_s / fastest.makespan_s:.1f}x faster than {slowest.target}."
    )
    if kind == "cpu":
        process, thread = _fastest(targets, PROCESS_LIKE), _fastest(targets, THREAD_LIKE)
        if process and thread:
            ratio = thread.makespan_s / process.makespan_s
            if ratio >= 1.15:
                lines.append(
                    f"{workload}: {process.target} {ratio:.1f}x faster than {thread.target} - "
                    "threads share one GIL, processes each have their own."
                )
            else:
                lines.append(
                    f"{workload}: {process.target} only {ratio:.2f}x faster than "
                    f"{thread.target} - with one core free, processes cannot help."
                )
    else:
        parts = [
            f"{t.target} at {t.efficiency:.0%} of ideal (concurrency {t.concurrency})"
            for t in sorted(targets, key=lambda t: -t.efficiency)
        ]
        lines.append(f"{workload} x{count}: " + ", ".join(parts) + ".")
        best = max(targets, key=lambda t: t.efficiency)
        if best.target in ("gevent", "asyncio"):
            lines.append(
                f"{best.target} overlaps the waiting best: one greenlet or coroutine per "
                "wait costs far less than a thread or a process."
            )
    failing = [t for t in targets if t.errors]
    for target in failing:
        lines.append(f"{target.target}: {target.errors} of {target.count} jobs failed.")
    return lines
