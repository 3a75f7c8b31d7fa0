"""The verdict: a few sentences, each derived from the numbers of one report."""

from __future__ import annotations

from services.report import TargetReport, WorkloadKind

THREAD_LIKE = ("threads", "threadpool", "gevent", "asyncio")
PROCESS_LIKE = ("prefork", "processpool")


def _fastest(targets: list[TargetReport], names: tuple[str, ...]) -> TargetReport | None:
    chosen = [t for t in targets if t.target in names]
    return min(chosen, key=lambda t: t.makespan_s) if chosen else None


def _gil_lesson(workload: str, targets: list[TargetReport]) -> list[str]:
    process, thread = _fastest(targets, PROCESS_LIKE), _fastest(targets, THREAD_LIKE)
    if not (process and thread):
        return []
    ratio = thread.makespan_s / process.makespan_s
    if ratio >= 1.15:
        return [
            f"{workload}: {process.target} {ratio:.1f}x faster than {thread.target} - "
            "threads share one GIL, processes each have their own."
        ]
    return [
        f"{workload}: {process.target} only {ratio:.2f}x faster than {thread.target} - "
        "with no second core free, processes cannot help."
    ]


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
        # Pools against pools, local executors against local executors: like with like.
        for group in ("pool", "local"):
            lines += _gil_lesson(workload, [t for t in targets if t.kind == group])
    else:
        parts = [
            f"{t.target} at {t.efficiency:.0%} of ideal (concurrency {t.concurrency})"
            for t in sorted(targets, key=lambda t: -t.efficiency)
        ]
        lines.append(f"{workload} x{count}: " + ", ".join(parts) + ".")
        if fastest.target in ("gevent", "asyncio"):
            lines.append(
                f"{fastest.target} overlaps the most waits (concurrency "
                f"{fastest.concurrency}): a greenlet or coroutine per wait costs far less "
                "than a thread or a process."
            )
    failing = [t for t in targets if t.errors]
    for target in failing:
        lines.append(f"{target.target}: {target.errors} of {target.count} jobs failed.")
    return lines
