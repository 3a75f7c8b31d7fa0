"""matplotlib, set up once for every chart jobrunner draws: the lab's comparison, the
CLI's scale sweep and the bench's summary. No display anywhere: files and bytes only."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

DPI = 110

__all__ = ["DPI", "figure_bytes", "plt", "spread_axis", "swept_axis", "value_label"]


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """The figure rendered as `fmt` ("svg", "png"), and closed: pyplot keeps every open
    figure alive, and a long-running API draws many."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()


def value_label(value: Any) -> str:
    """A swept value as the user typed it: 5, 0.5, true, fast (a string without quotes)."""
    return value if isinstance(value, str) else json.dumps(value)


def evenly_spaced(values: Sequence[Any]) -> bool:
    """Numbers in rising order with equal steps (0, 10, 20): a sweep an axis can show to scale."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not numbers or len(values) < 2:
        return False
    steps = [b - a for a, b in itertools.pairwise(values)]
    return all(step > 0 for step in steps) and max(steps) - min(steps) <= 1e-9 * max(steps)


def swept_axis(axes: Axes, values: Sequence[Any], label: str) -> list[float]:
    """The x positions of a sweep's values, the axis ticked and labelled with them. Evenly
    spaced numbers are drawn to scale; any others one even step apart, said in the label:
    to scale, 0, 5, 20, 50 would crowd the points where things change into one corner."""
    if evenly_spaced(values):
        positions = [float(v) for v in values]
    else:
        positions = [float(i) for i in range(len(values))]
        label += " (points evenly spaced, not to scale)"
    axes.set_xticks(positions, [value_label(v) for v in values])
    axes.set_xlabel(label)
    return positions


def spread_axis(axes: Axes, drawn: Sequence[float], label: str) -> None:
    """The y axis of figures where a ratio is what a reader compares (jobs/s of one target
    against another): linear from 0, or logarithmic when they span more than 10x, since
    then the top line (gevent's 500 jobs/s of pure waiting) would flatten every other into
    the axis. `label` has a {} where ", log scale" goes when it is."""
    positive = [v for v in drawn if v > 0]
    if positive and max(positive) > 10 * min(positive):
        axes.set_yscale("log")
        # Ticks at 10, 20, 50, 100 …, written so, rather than 2x10^1 at every minor tick.
        axes.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axes.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_ylabel(label.format(", log scale"))
    else:
        axes.set_ylim(bottom=0)
        axes.set_ylabel(label.format(""))
