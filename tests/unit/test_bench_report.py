"""The benchmark's table says, for each figure, whether the issue's target is met."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.report import Row, chart, table


@pytest.mark.parametrize(
    ("target", "stock", "jobrunner", "met"),
    [
        (">= 3x", [100, 90, 110], [330, 300, 280], True),  # medians 100 and 300
        (">= 3x", [100], [290], False),
        ("<= stock", [17.0], [16.5], True),
        ("<= stock", [17.0], [21.0], False),
        ("<= 1.5x", [3.0], [2.9], True),
        ("<= 5 ms", [], [4.1], True),
        ("<= 5 ms", [], [9.4], False),
        ("reported", [6.0], [8.0], None),
        (">= 10x", [], [], None),
    ],
)
def test_met_reads_the_target_as_worded(
    target: str, stock: list[float], jobrunner: list[float], met: bool | None
) -> None:
    assert Row("figure", target, "unit", stock, jobrunner).met() is met


def test_table_and_chart_show_every_ratio_figure(tmp_path: Path) -> None:
    rows = [
        Row("gevent sleep", ">= 3x", "jobs/s", [280.0], [900.0]),
        Row("commands per job", "<= stock", "cmds", [17.0], [16.0]),
        Row("memory per slot", "reported", "MiB", [6.0], [8.0]),
    ]
    text = table(rows)
    assert "| gevent sleep [jobs/s] | 280 | 900 | 3.21x | >= 3x | yes |" in text
    assert "| memory per slot [MiB] | 6.00 | 8.00 | 1.33x | reported | - |" in text
    drawn = chart(rows, tmp_path / "ratios.png", "test")
    assert drawn is not None and drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart(rows[2:], tmp_path / "none.png", "test") is None  # nothing with a target
