"""The peers step's chart: each system's no-op throughput, one by one and in bulk, and its
share of the ideal on sleep(0.1) at concurrency 100, side by side. Nineteen rows of the
run's table become two panels of bars in which jobrunner's place among the peers shows
at a glance.

It is drawn from the run's own markdown tables (what `bench/peers/steps.py` writes into
the run's record), so the chart of any run kept in bench/RESULTS.md can be drawn again:

    .venv/bin/python -m bench.peers.chart bench/latest-run.md docs/img/performance/peers.png

reads the first run in the file (RESULTS.md keeps the newest first); `--run 21:19` the
first run whose `## ` heading holds that text.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes

from bench.peers.figures import (
    BULK,
    MODE_TITLES,
    NOOP_TARGETS,
    NOOP_TITLE,
    ONE,
    SLEEP100_TITLE,
    SLEEP_TARGETS,
)
from services.core.plotting import figure_bytes, plt

# How the run's tables name the two ways of sending ("one by one: POST /jobs").
MODES = (MODE_TITLES[ONE], MODE_TITLES[BULK])
COLORS = dict(zip(MODES, ("#9ecae1", "#3182bd"), strict=True))  # peers: blues
JOBRUNNER_COLORS = dict(zip(MODES, ("#a1d99b", "#31a354"), strict=True))  # jobrunner: greens


class NoPeersTable(ValueError):
    """The markdown holds no table of the peers step under the heading looked for."""


@dataclass(frozen=True)
class Bar:
    system: str  # "Huey threads -c8"
    mode: str  # "one by one" or "bulk"
    value: float  # jobs/s, or % of ideal


def read_bars(markdown: str, title: str, column: str) -> list[Bar]:
    """The bars of the first table under `### {title}`: one per system and way of sending,
    `column`'s median. A system sent one by one two ways (jobrunner's `POST /jobs` and
    `Client.submit`) shows the first, as the targets do; unmeasured rows are left out."""
    heading = re.search(rf"^### {re.escape(title)}\s*$", markdown, re.MULTILINE)
    if heading is None:
        raise NoPeersTable(f"no '### {title}' table in the run's record")
    lines = markdown[heading.end() :].lstrip("\n").splitlines()
    rows = _table_lines(lines)
    if len(rows) < 2:
        raise NoPeersTable(f"the '### {title}' heading is not followed by a table")
    names = _cells(rows[0])
    if column not in names:
        raise NoPeersTable(f"the '{title}' table has no column {column!r}")
    where = names.index(column)
    bars: list[Bar] = []
    for row in rows[2:]:
        cells = _cells(row)
        system, sent = cells[0], cells[1]
        mode = next((m for m in MODES if sent.startswith(m)), None)
        value = _number(cells[where]) if len(cells) > where else None
        if mode is None or value is None:
            continue
        if any(b.system == system and b.mode == mode for b in bars):
            continue  # jobrunner's second way one by one (Client.submit)
        bars.append(Bar(system, mode, value))
    return bars


def _table_lines(lines: list[str]) -> list[str]:
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("|").split("|")]


def _number(cell: str) -> float | None:
    """'2,416' -> 2416.0, '94 %' -> 94.0, '-' -> None."""
    text = cell.replace(",", "").replace("%", "").strip()
    try:
        return float(text)
    except ValueError:
        return None


def draw(noop: list[Bar], sleep: list[Bar], path: Path, title: str) -> Path:
    """Left: no-op jobs/s; right: sleep(0.1) at -c100, % of ideal; a pair of bars per
    system (one by one, bulk), jobrunner's in green, in the run's order."""
    height = 1.6 + 0.36 * max(len({b.system for b in noop}), len({b.system for b in sleep}))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(4.0, height)))
    _panel(left, noop, "no-op jobs/s, enqueue -> result stored (higher is better)", "{:,.0f}")
    _panel(right, sleep, "sleep(0.1) at concurrency 100: % of the ideal 1,000 jobs/s", "{:.0f} %")
    # Issue 13's targets, where its best peer puts them in this run.
    for key, style in ((ONE, "--"), (BULK, ":")):
        mode, times = MODE_TITLES[key], NOOP_TARGETS[key]
        best = best_peer(noop, mode)
        if best:
            left.axvline(best * times, color="grey", linestyle=style,
                         label=f"target {mode}: {times:g}x the best peer")  # fmt: skip
    share = 100 * SLEEP_TARGETS["sleep100"]
    right.axvline(share, color="grey", linestyle="--", label=f"target: {share:.0f} % of ideal")
    right.set_xlim(0, 105)
    for ax in (left, right):
        handles, names = ax.get_legend_handles_labels()
        shown = dict(zip(names, handles, strict=True))  # one entry a label, not a bar
        ax.legend(shown.values(), shown.keys(), fontsize=7, loc="upper center",
                  bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)  # fmt: skip
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_bytes(fig, "png"))
    return path


def _panel(ax: Axes, bars: list[Bar], label: str, value_format: str) -> None:
    systems = list(dict.fromkeys(b.system for b in bars))
    for offset, mode in zip((-0.2, 0.2), MODES, strict=True):
        for row, system in enumerate(systems):
            bar = next((b for b in bars if b.system == system and b.mode == mode), None)
            if bar is None:
                continue
            ours = _ours(bar)
            colors = JOBRUNNER_COLORS if ours else COLORS
            ax.barh(row + offset, bar.value, height=0.4, color=colors[mode],
                    label=f"jobrunner, {mode}" if ours else f"peers, {mode}")  # fmt: skip
            ax.text(bar.value, row + offset, " " + value_format.format(bar.value),
                    va="center", fontsize=7)  # fmt: skip
    ax.set_yticks(range(len(systems)), systems, fontsize=8)
    ax.invert_yaxis()  # the run's order, top down
    ax.set_xlabel(label, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def best_peer(bars: list[Bar], mode: str) -> float | None:
    """The best peer's value sent `mode`'s way; in bulk, a peer without a bulk path stands
    with its one-by-one runs, as in the bench's target rows (figures.best_peer)."""
    values = []
    for system in dict.fromkeys(b.system for b in bars if not _ours(b)):
        own = {b.mode: b.value for b in bars if b.system == system}
        value = own.get(mode, own.get(MODES[0]))
        if value is not None:
            values.append(value)
    return max(values, default=None)


def _ours(bar: Bar) -> bool:
    return bar.system.startswith("jobrunner")


def run_section(markdown: str, heading_text: str) -> str:
    """`markdown` from the first `## ` heading holding `heading_text` on: where a record
    of many runs (bench/RESULTS.md) keeps that run."""
    for match in re.finditer(r"^## .*$", markdown, re.MULTILINE):
        if heading_text in match.group(0):
            return markdown[match.start() :]
    raise NoPeersTable(f"no '## ' heading holding {heading_text!r}")


def draw_run(markdown: str, path: Path, title: str) -> Path:
    """The chart of the first peers run in `markdown` (a run's record)."""
    noop = read_bars(markdown, NOOP_TITLE, "jobs/s (median)")
    sleep = read_bars(markdown, SLEEP100_TITLE, "% of ideal")
    return draw(noop, sleep, path, title)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("record", type=Path, help="a run's record: bench/latest-run.md")
    parser.add_argument("png", type=Path, help="where to write the chart")
    parser.add_argument("--title", default="jobrunner beside the other Python job queues")
    parser.add_argument("--run", default="", help="text of the run's '## ' heading: 21:19")
    args = parser.parse_args(argv)
    try:
        record = args.record.read_text()
        if args.run:
            record = run_section(record, args.run)
        drawn = draw_run(record, args.png, args.title)
    except NoPeersTable as exc:
        parser.error(f"{args.record}: {exc} (run: make bench ARGS='--only peers')")
    print(drawn)


if __name__ == "__main__":
    main()
