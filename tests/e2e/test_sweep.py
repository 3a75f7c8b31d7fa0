"""`jobrunner compare --sweep`: one experiment per value of a parameter, as a user runs it
against the real stack; and a workload named by its `module:function` ref."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import TEST_CONCURRENCY
from tests.e2e.test_cli import cli
from tests.stack import Stack

VALUES = (0, 20)


def experiment_ids(stack: Stack) -> list[str]:
    answer = stack.http.get(f"{stack.url}/experiments", params={"limit": 200}, timeout=10)
    assert answer.status_code == 200, answer.text
    return [e["id"] for e in answer.json()["experiments"]]


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of the rich table printed: cells between the │ borders."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in stdout.splitlines()
        if line.strip().startswith("│")
    ]


def test_sweep_runs_one_experiment_per_value_and_draws_them(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    before = set(experiment_ids(stack))
    # Given out of order: the sweep reads numbers from left to right.
    answer = cli(
        stack, "compare", "mixed", "--sweep", "cpu_ms=20,0", "--param", "io_ms=20",
        "--count", "8", "--pools", "threads,gevent", "--local", "none", "--out", str(out),
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr + answer.stdout
    assert "Traceback" not in answer.stderr + answer.stdout
    # Progress names the value running.
    assert "cpu_ms=0 (1 of 2)" in answer.stdout and "cpu_ms=20 (2 of 2)" in answer.stdout

    rows = table_rows(answer.stdout)
    assert [row[0] for row in rows] == [str(v) for v in VALUES], answer.stdout
    assert all(len(row) == 4 for row in rows), rows  # value, threads, gevent, best
    assert all(float(cell) > 0 for row in rows for cell in row[1:3]), rows
    assert "mixed(io_ms=20) x8: jobs/s by cpu_ms" in answer.stdout
    assert "best: " in answer.stdout

    figures = json.loads((out / "sweep.json").read_text())
    assert figures["parameter"] == "cpu_ms" and figures["values"] == list(VALUES)
    assert figures["targets"] == {"threads": "pool", "gevent": "pool"}
    assert figures["target_concurrency"] == {p: TEST_CONCURRENCY[p] for p in ("threads", "gevent")}
    assert [run["value"] for run in figures["runs"]] == list(VALUES)
    for run in figures["runs"]:
        assert set(run["throughput_per_s"]) == {"threads", "gevent"}, run
        assert all(jobs_per_s > 0 for jobs_per_s in run["throughput_per_s"].values()), run
        assert run["best"] == max(run["throughput_per_s"], key=run["throughput_per_s"].get)
    assert figures["crossover"] in answer.stdout

    # Each value was its own experiment on the server, with the fixed params and the value.
    created = set(experiment_ids(stack)) - before
    assert created == {run["experiment"] for run in figures["runs"]}
    for run in figures["runs"]:
        experiment = stack.http.get(f"{stack.url}/experiments/{run['experiment']}", timeout=10)
        assert experiment.json()["request"]["params"] == {"io_ms": 20, "cpu_ms": run["value"]}
    # And the value mattered: 8 x 20 ms of CPU on gevent's one thread cannot overlap.
    gevent = [run["throughput_per_s"]["gevent"] for run in figures["runs"]]
    assert gevent[1] < gevent[0], figures

    svg = (out / "sweep.svg").read_text()
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    assert root.tag.endswith("svg")
    # matplotlib writes text as glyph paths, and each legend entry's text as a comment.
    for name in ("threads", "gevent", "cpu_ms"):
        assert name in svg, name
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--sweep", "cpu_ms"], "want NAME=v1,v2"),
        (["--sweep", "cpu_ms=0,,5"], "an empty value"),
        (["--sweep", "cpu_ms=5"], "two values or more"),
        # These are checked against the workload's schema in GET /workloads:
        (["--sweep", "cpu_msec=0,5"], "mixed has no such parameter (it has: cpu_ms, io_ms)"),
        (["--sweep", "cpu_ms=0,-5"], "cpu_ms=-5: must be >= 0"),
        (["--sweep", "io_ms=0,5"], "also given as --param io_ms"),
    ],
)
def test_a_bad_sweep_is_one_line_exit_2_and_runs_nothing(
    stack: Stack, extra: list[str], says: str
) -> None:
    before = experiment_ids(stack)
    answer = cli(
        stack, "compare", "mixed", "--param", "io_ms=10", "--count", "2",
        "--pools", "threads", "--local", "none", *extra,
    )  # fmt: skip
    assert answer.returncode == 2, answer.stderr + answer.stdout
    lines = [line for line in answer.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], answer.stderr
    assert "Traceback" not in answer.stderr + answer.stdout
    assert experiment_ids(stack) == before


def test_compare_takes_a_module_function_ref(stack: Stack, tmp_path: Path) -> None:
    """The ref goes to the API as given, and `--local all` finds the workload's executors
    by it as by its name."""
    catalog = stack.http.get(f"{stack.url}/workloads", timeout=10).json()["workloads"]
    mixed = next(entry for entry in catalog if entry["name"] == "mixed")
    assert ":" in mixed["ref"] and mixed["local_executors"], mixed
    answer = cli(
        stack, "compare", mixed["ref"], "-p", "cpu_ms=0", "-p", "io_ms=5", "--count", "3",
        "--pools", "threads", "--local", "all", "--concurrency", "2",
        "--out", str(tmp_path / "ref"),
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr + answer.stdout
    report = json.loads((tmp_path / "ref" / "report.json").read_text())["report"]
    assert report["workload"] == "mixed"
    targets = [t["target"] for t in report["targets"]]
    assert targets == ["threads", *mixed["local_executors"]]
