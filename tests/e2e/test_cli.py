"""The `jobrunner` CLI as a user runs it, against the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.app import parse_param
from tests.stack import TEST_KEYS, Stack


def cli(
    stack: Stack | None,
    *args: str,
    url: str | None = None,
    columns: int = 200,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    env = {
        **os.environ, "JOBRUNNER_API_KEY": TEST_KEYS["admin"][1], "COLUMNS": str(columns),
        **(extra_env or {}),
    }  # fmt: skip
    api = url or (stack.url if stack else "")
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args, "--api", api],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_submit_wait_status_jobs_pools(stack: Stack) -> None:
    done = cli(stack, "submit", "cpu_primes", "-p", "below=1000", "--wait")
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and "168" in done.stdout
    job_id = next(
        line.split()[1] for line in done.stdout.splitlines() if line.strip().startswith("id")
    )
    status = cli(stack, "status", job_id)
    assert status.returncode == 0 and "cpu_primes" in status.stdout
    listing = cli(stack, "jobs", "--workload", "cpu_primes", "--limit", "5")
    assert listing.returncode == 0 and job_id in listing.stdout
    pools = cli(stack, "pools")
    assert pools.returncode == 0
    assert all(name in pools.stdout for name in ("threads", "prefork", "gevent"))
    assert "workers" in pools.stdout and "catalog" in pools.stdout
    # Every live worker of the stack on a line of its own, at its concurrency, with the
    # API's catalog (a ✓ on its line, nothing below); the experiment worker serves no pool.
    lines = worker_lines(pools.stdout)
    for worker in (w for w in stack.workers if w.pool != "experiments"):
        (line,) = [line for line in lines if f"{worker.node} (x{worker.concurrency})" in line]
        assert "✓" in line, line
    assert len(lines) == 3, pools.stdout
    assert "differs" not in pools.stdout
    narrow = cli(stack, "pools", columns=80)  # a row per worker: names fold, never cut
    assert narrow.returncode == 0 and "…" not in narrow.stdout, narrow.stdout
    assert drawn_whole(narrow.stdout) and narrow.stdout.count("✓") == 3, narrow.stdout
    catalog = cli(stack, "workloads")
    assert catalog.returncode == 0 and "http_get" in catalog.stdout


def worker_lines(stdout: str, mark: str = "") -> list[str]:
    """The lines of `jobrunner pools` that name a worker (`node (xN)`), with `mark`."""
    return [line for line in stdout.splitlines() if " (x" in line and mark in line]


def test_a_failed_job_exits_non_zero(stack: Stack) -> None:
    failed = cli(stack, "submit", "http_get", "-p", "url=http://127.0.0.1:9/", "--wait")
    assert failed.returncode == 2
    assert "failed" in failed.stdout and "ConnectionError" in failed.stdout


def test_api_errors_are_one_clear_line(stack: Stack) -> None:
    bad = cli(stack, "submit", "mine_bitcoin")
    assert bad.returncode == 1
    assert "Validation failed (422)" in bad.stderr and "sleep" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout


def test_unreachable_api_says_how_to_start_one() -> None:
    answer = cli(None, "pools", url="http://127.0.0.1:9")
    assert answer.returncode == 1
    assert "no jobrunner API at http://127.0.0.1:9" in answer.stderr and "make run" in answer.stderr
    assert "Traceback" not in answer.stderr


def test_compare_writes_report_and_chart(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    answer = cli(
        stack, "compare", "sleep", "-p", "seconds=0.05", "--count", "10",
        "--pools", "threads,gevent", "--local", "sequential,asyncio", "--concurrency", "5",
        "--out", str(out),
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr + answer.stdout
    assert "efficiency" in answer.stdout and "fastest is" in answer.stdout
    report = json.loads((out / "report.json").read_text())
    assert {t["target"] for t in report["report"]["targets"]} == {
        "threads", "gevent", "sequential", "asyncio",
    }  # fmt: skip
    table = [line.split(" | ") for line in (out / "report.md").read_text().splitlines()]
    header = next(row for row in table if row[0] == "| target")
    rows = [row for row in table if row[0].removeprefix("| ") in ("threads", "gevent")]
    for column in ("processes", "latency p99 s", "peak RSS MB", "errors"):
        assert all(row[header.index(column)] not in ("", "-") for row in rows), column
    assert all(row[header.index("errors")] == "0" for row in rows)
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (out / "chart.svg").read_bytes()[:500]


def drawn_whole(text: str) -> bool:
    """Every line of a table ends at its right edge: rich crops what is wider than the
    terminal, so a table too wide loses its right border."""
    rows = [line.strip() for line in text.splitlines() if line.strip()]
    rows = [row for row in rows if row[0] in "┏┃┡│├└"]
    return bool(rows) and all(row[-1] in "┓┃┩│┤┘" for row in rows)


def test_compare_and_compare_runs_fit_80_columns(stack: Stack, tmp_path: Path) -> None:
    """In an 80-column terminal nothing is cut to `…`: compare shows the figures a user
    decides by (the rest with --wide), compare-runs its runs and their figures."""
    ids = []
    for name, extra, columns in (("narrow", [], 80), ("wide", ["--wide"], 200)):
        answer = cli(
            stack, "compare", "noop", "--count", "5", "--pools", "threads",
            "--local", "threadpool,processpool", "--out", str(tmp_path / name), *extra,
            columns=columns,
        )  # fmt: skip
        assert answer.returncode == 0, answer.stderr + answer.stdout
        # From the title to the verdict's first line (the verdict may say "concurrency").
        title = answer.stdout.index("noop x5")
        table = answer.stdout[title : answer.stdout.index("\n  - ", title)]
        assert "…" not in table, table
        assert drawn_whole(table), table
        for header in ("target", "jobs/s", "makespan", "efficiency", "latency", "peak RSS"):
            assert header in table, (header, table)
        for target in ("threads", "threadpool", "processpool"):
            assert target in table, (target, table)
        ids.append(json.loads((tmp_path / name / "report.json").read_text())["id"])
        if name == "narrow":
            assert "concurrency" not in table and "--wide" in table, table
        else:
            for header in ("kind", "concurrency", "processes", "queue wait", "CPU/job", "errors"):
                assert header in table, (header, table)

    runs = cli(stack, "compare-runs", *ids, columns=80)
    assert runs.returncode == 0, runs.stderr + runs.stdout
    assert "…" not in runs.stdout, runs.stdout
    assert drawn_whole(runs.stdout), runs.stdout
    assert all(experiment_id in runs.stdout for experiment_id in ids), runs.stdout
    assert "noop(" in runs.stdout and " x5" in runs.stdout and "last/first" in runs.stdout
    assert all(target in runs.stdout for target in ("threads", "threadpool", "processpool"))


@pytest.mark.slow
def test_compare_scale_sweeps_private_stacks_without_an_api(tmp_path: Path) -> None:
    """--scale starts its own stacks; no API is running where --api points (and the
    default --local all must not make it ask one)."""
    out = tmp_path / "scale"
    answer = cli(
        None, "compare", "noop", "--count", "20", "--pools", "threads,gevent",
        "--scale", "1,2", "--out", str(out), url="http://127.0.0.1:9",
        extra_env={"TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr + answer.stdout
    # Each stack's folder (Redis's files, the processes' logs) goes once its run worked.
    assert not list(tmp_path.glob("jobrunner-scale*")), list(tmp_path.iterdir())
    throughput = json.loads((out / "scale.json").read_text())
    assert set(throughput) == {"threads", "gevent"}
    for pool, by_workers in throughput.items():
        assert set(by_workers) == {"1", "2"}, pool
        assert all(jobs_per_s > 0 for jobs_per_s in by_workers.values()), pool
    assert (out / "scale.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (out / "scale.svg").read_bytes()[:500]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seconds=0.5", ("seconds", 0.5)),
        ("rounds=1000", ("rounds", 1000)),
        ("url=http://x/?a=b", ("url", "http://x/?a=b")),
        ("value=[1, 2]", ("value", [1, 2])),
        ("flag=true", ("flag", True)),
    ],
)
def test_param_values_are_json_when_they_parse(text: str, expected: tuple) -> None:
    assert parse_param(text) == expected


def test_submit_batch_from_a_file(stack: Stack, tmp_path: Path) -> None:
    good = tmp_path / "jobs.jsonl"
    good.write_text(
        "\n".join(json.dumps({"workload": "noop", "params": {"value": i}}) for i in range(3))
    )
    answer = cli(stack, "submit", "--batch", str(good))
    assert answer.returncode == 0, answer.stderr
    assert "accepted 3 jobs" in answer.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"workload": "noop"}, {"workload": "sleep", "params": {}}]))
    refused = cli(stack, "submit", "--batch", str(bad))
    assert refused.returncode == 1
    assert "jobs.1.params.seconds" in refused.stderr and "0 accepted" in refused.stderr


def test_submit_batch_splits_a_large_file_into_requests(stack: Stack, tmp_path: Path) -> None:
    # 1,002 jobs: a first request of 1,000, accepted; a second of 2, whose bad item
    # refuses it, and the answer says what was accepted before.
    jobs = [{"workload": "noop", "params": {"value": i}} for i in range(1_001)]
    jobs.append({"workload": "sleep", "params": {}})
    path = tmp_path / "large.jsonl"
    path.write_text("\n".join(json.dumps(job) for job in jobs))
    before = stack.redis().zcard("jobrunner:jobs")
    answer = cli(stack, "submit", "--batch", str(path))
    assert answer.returncode == 1
    assert "jobs 1000..1001" in answer.stderr and "1000 accepted before" in answer.stderr
    assert stack.redis().zcard("jobrunner:jobs") == before + 1_000


def test_cli_finds_the_api_and_key_by_itself(stack: Stack, tmp_path: Path) -> None:
    """No --api and no JOBRUNNER_API_KEY: the URL from JOBRUNNER_URL, the key from the
    .run/api-key that `make run` writes, in the folder the CLI runs from."""
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "api-key").write_text(TEST_KEYS["admin"][1] + "\n")
    hidden = ("JOBRUNNER_API_KEY", "JOBRUNNER_RUN_DIR", "JOBRUNNER_URL")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env.update(JOBRUNNER_URL=stack.url, COLUMNS="200")
    answer = subprocess.run(
        [sys.executable, "-m", "services.cli", "pools"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert "prefork" in answer.stdout and "gevent" in answer.stdout
    (tmp_path / ".run" / "api-key").write_text("not-a-key\n")  # and it is that key it sent
    refused = subprocess.run(
        [sys.executable, "-m", "services.cli", "pools"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode != 0 and "401" in refused.stderr


# -- a user's async workload, and a worker without the user's module ---------------------

USER_JOBS = '''
import asyncio

from jobrunner import workload


@workload
async def nap(ms: int = 5) -> int:
    """Waits on asyncio."""
    await asyncio.sleep(ms / 1000)
    return ms
'''


@pytest.fixture(scope="module")
def napping(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API, a threads, a prefork and the experiments worker with a user's module of
    one async workload; a gevent worker started without it."""
    folder = tmp_path_factory.mktemp("napjobs")
    (folder / "napjobs.py").write_text(USER_JOBS)
    path = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    stack = Stack(
        tmp_path_factory.mktemp("nap-stack"),
        env_overrides={"JOBRUNNER_WORKLOADS": "napjobs", "PYTHONPATH": path},
    )
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker("threads", 2)
        stack.start_worker("prefork", 1)
        stack.start_worker("experiments")
        without = stack.worker_process("gevent", 5)
        without.env = {**without.env, "JOBRUNNER_WORKLOADS": ""}
        stack.start(without)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def test_compare_leaves_gevent_out_for_an_async_workload(napping: Stack, tmp_path: Path) -> None:
    answer = cli(
        napping, "compare", "nap", "--count", "4", "--local", "none", "--out", str(tmp_path)
    )
    assert answer.returncode == 0, answer.stderr + answer.stdout
    said = [line for line in answer.stdout.splitlines() if "left out" in line]
    assert said == ["pools: threads, prefork (gevent left out: nap is async, and gevent's "
                    "greenlets share one thread, so one event loop)"], answer.stdout  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())["report"]
    assert [t["target"] for t in report["targets"]] == ["threads", "prefork"]

    # Named on the command line, gevent goes to the API, whose 422 says why.
    asked = cli(napping, "compare", "nap", "--count", "4", "--local", "none", "--pools", "gevent")
    assert asked.returncode == 1, asked.stderr + asked.stdout
    assert "422" in asked.stderr and "gevent cannot run nap" in asked.stderr, asked.stderr
    assert "left out" not in asked.stdout


def test_pools_names_a_worker_whose_catalog_differs(napping: Stack) -> None:
    without = next(w for w in napping.workers if w.pool == "gevent")
    answer = cli(napping, "pools")
    assert answer.returncode == 0, answer.stderr
    assert [without.node in line for line in worker_lines(answer.stdout, "differs")] == [True]
    assert len(worker_lines(answer.stdout, "✓")) == 2, answer.stdout  # threads, prefork
    below = [line for line in answer.stdout.splitlines() if line.startswith(without.node)]
    assert below == [
        f"{without.node}: catalog differs from the API's: missing nap (their jobs fail there)"
    ], answer.stdout
