"""`jobrunner compare`'s table fits a terminal: drawn from the reports of real experiments
stored under docs/lab, at 80 columns it shows the figures a user decides by, no cell or
header cut; with --wide, at 200 columns, every column."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from services.cli.compare import REPORT_COLUMNS, report_table

ROOT = Path(__file__).resolve().parents[2]
STORED = sorted((ROOT / "docs" / "lab").rglob("report.json"))

DEFAULT_HEADERS = (
    "target", "jobs/s", "makespan\ns", "ideal\ns", "efficiency", "latency\np50 s",
    "peak RSS\nMB",
)  # fmt: skip


def rendered(report: dict[str, Any], width: int, wide: bool = False) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(report_table(report, wide=wide))
    return console.export_text().splitlines()


def headers(lines: list[str]) -> list[str]:
    """Each column's header as drawn: the lines between the table's top edge and the
    header rule, cut at the heavy borders, the pieces of a column joined line by line."""
    top = next(i for i, line in enumerate(lines) if line.lstrip().startswith("┏"))
    rule = next(i for i, line in enumerate(lines) if line.lstrip().startswith("┡"))
    rows = [line.strip().strip("┃").split("┃") for line in lines[top + 1 : rule]]
    return [
        "\n".join(row[i].strip() for row in rows if row[i].strip()) for i in range(len(rows[0]))
    ]


def body(lines: list[str]) -> list[list[str]]:
    rule = next(i for i, line in enumerate(lines) if line.lstrip().startswith("┡"))
    bottom = next(i for i, line in enumerate(lines) if line.lstrip().startswith("└"))
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in lines[rule + 1 : bottom]
    ]


def test_reports_are_stored() -> None:
    # The tests below are parametrized by these; none would run without them.
    assert len(STORED) >= 2, STORED


@pytest.mark.parametrize("path", STORED, ids=lambda p: str(p.relative_to(ROOT / "docs" / "lab")))
def test_default_table_fits_80_columns_uncut(path: Path) -> None:
    report = json.loads(path.read_text())["report"]
    lines = rendered(report, 80)
    text = "\n".join(lines)
    assert "…" not in text, text
    # Whole headers, in order, and the table's right edge drawn (rich crops what overflows).
    assert headers(lines) == list(DEFAULT_HEADERS), text
    drawn = [line.strip() for line in lines if line.strip()[:1] in tuple("┏┃┡│└")]
    assert drawn and all(line[-1] in "┓┃┩│┘" for line in drawn), text
    rows = body(lines)
    assert [row[0] for row in rows] == [t["target"] for t in report["targets"]], text
    assert [row[1] for row in rows] == [f"{t['throughput_per_s']:.1f}" for t in report["targets"]]
    assert [row[4] for row in rows] == [f"{t['efficiency']:.0%}" for t in report["targets"]]
    # And the rest is said to be one option away.
    assert "--wide" in text


@pytest.mark.parametrize("path", STORED, ids=lambda p: str(p.relative_to(ROOT / "docs" / "lab")))
def test_wide_table_shows_every_column_at_200(path: Path) -> None:
    report = json.loads(path.read_text())["report"]
    lines = rendered(report, 200, wide=True)
    text = "\n".join(lines)
    assert "…" not in text, text
    shown = headers(lines)
    assert shown == [column.header for column in REPORT_COLUMNS], text
    for wanted in ("kind", "concurrency", "processes", "latency\np99 s", "queue wait\np50 s"):
        assert wanted in shown
    errors = body(lines)
    assert [row[shown.index("errors")] for row in errors] == [
        str(t["errors"]) for t in report["targets"]
    ]
    assert set(DEFAULT_HEADERS) <= set(shown)
