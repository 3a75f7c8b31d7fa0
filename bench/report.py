"""The benchmark's figures: one Row per figure, the table it prints, and the chart it draws.

A Row holds every repetition of both sides; the table shows medians, the ratio
jobrunner / stock, and whether the issue's target is met. Targets are written as the
issue words them (">= 3x", "<= stock", "<= 5 ms", "reported") and read here.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from services.core.plotting import figure_bytes, plt

_RATIO_TARGET = re.compile(r"(>=|<=) (\d+(?:\.\d+)?)x")
_ABSOLUTE_TARGET = re.compile(r"<= (\d+(?:\.\d+)?) ms")


@dataclass
class Row:
    figure: str
    target: str
    unit: str
    stock: list[float] = field(default_factory=list)
    jobrunner: list[float] = field(default_factory=list)
    note: str = ""

    @staticmethod
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def ratio(self) -> float | None:
        s, j = self.median(self.stock), self.median(self.jobrunner)
        if s is None or j is None or s == 0:
            return None
        return j / s

    def bound(self) -> tuple[str, float] | None:
        """(">=" or "<=", the ratio the target asks for), for ratio targets."""
        if self.target == "<= stock":
            return "<=", 1.0
        match = _RATIO_TARGET.fullmatch(self.target)
        return (match.group(1), float(match.group(2))) if match else None

    def met(self) -> bool | None:
        """Whether the target is met; None when there is none or nothing was measured."""
        absolute = _ABSOLUTE_TARGET.fullmatch(self.target)
        if absolute:
            value = self.median(self.jobrunner)
            return None if value is None else value <= float(absolute.group(1))
        bound, ratio = self.bound(), self.ratio()
        if bound is None or ratio is None:
            return None
        return ratio >= bound[1] if bound[0] == ">=" else ratio <= bound[1]


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    out = [
        "| figure | stock (median) | jobrunner (median) | jobrunner / stock | target | met "
        "| runs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = r.ratio()
        cell = f"{ratio:.2f}x" if ratio is not None else "-"
        note = f" ({r.note})" if r.note else ""
        met = {True: "yes", False: "**no**", None: "-"}[r.met()]
        out.append(
            f"| {r.figure} [{r.unit}] | {fmt(r.median(r.stock))} | "
            f"{fmt(r.median(r.jobrunner))} | {cell} | {r.target}{note} | {met} | "
            f"{len(r.stock)}+{len(r.jobrunner)} |"
        )
    return "\n".join(out)


def chart(rows: list[Row], path: Path, title: str) -> Path | None:
    """Each ratio figure as a bar against its target, on a log scale (the ratios range
    widely on both sides of 1); green where the target is met. None if nothing to draw."""
    drawn = [(r, r.ratio(), r.bound()) for r in rows]
    drawn = [(r, ratio, bound) for r, ratio, bound in drawn if ratio and bound]
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(drawn) + 1.4))
    for y, (row, ratio, (direction, target)) in enumerate(drawn):
        ax.barh(y, ratio, color="#3a9d5d" if row.met() else "#c8553d")
        ax.plot([target, target], [y - 0.4, y + 0.4], color="black", linewidth=2)
        label = f"{ratio:.2f}x (target {direction} {target:g}x)"
        ax.text(max(ratio, target) * 1.06, y, label, va="center")
    ax.set_yticks(range(len(drawn)), [row.figure for row, _, _ in drawn])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlim(0.3, max(ratio for _, ratio, _ in drawn) * 12)  # room for the labels
    ax.set_xlabel("jobrunner / stock (log scale); black tick = target")
    ax.set_title(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_bytes(fig, "png"))
    return path
