"""The comparison drawn: throughput per target, and makespan against the ideal bound."""

from __future__ import annotations

from services.core.plotting import figure_bytes, plt
from services.lab.experiments import ExperimentReport

POOL_COLOUR, LOCAL_COLOUR, IDEAL_COLOUR = "#1f77b4", "#ff7f0e", "#2ca02c"


def render_comparison(report: ExperimentReport, fmt: str = "svg") -> bytes:
    """An experiment's report drawn: who is fastest, and how close each came to its ideal."""
    names = [t.target for t in report.targets]
    colours = [POOL_COLOUR if t.kind == "pool" else LOCAL_COLOUR for t in report.targets]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 0.55 * len(names) + 2.2), sharey=True)
    left.barh(names, [t.throughput_per_s for t in report.targets], color=colours)
    left.set_xlabel("throughput (jobs/s) - longer is better")
    left.invert_yaxis()
    right.barh(names, [t.makespan_s for t in report.targets], color=colours, label="measured")
    right.scatter(
        [t.ideal_makespan_s for t in report.targets], names, marker="|", s=400,
        color=IDEAL_COLOUR, linewidths=3, label="ideal bound", zorder=3,
    )  # fmt: skip
    for target in report.targets:
        right.annotate(
            f" {target.efficiency:.0%}", (target.makespan_s, target.target), va="center", fontsize=8
        )
    right.set_xlabel("makespan (s) and ideal bound - shorter is better")
    right.legend(loc="lower right", fontsize=8)
    params = ", ".join(f"{k}={v}" for k, v in report.params.items())
    # Where it ran is part of the result: a local run and a cluster run of the same
    # workload must not be told apart by their file names alone.
    figure.suptitle(
        f"{report.workload}({params}) x{report.count} on {report.topology.where}\n"
        f"blue: Celery pools, orange: local executors (concurrency {report.concurrency})",
        fontsize=10,
    )
    return figure_bytes(figure, fmt)
