"""The comparison lab end to end: experiments run on the real pools and the local
executors, and their reports hold together.

A lesson about cores needs a machine that has a second one to give. These machines are
shared, so such a test measures what the machine gives around each run (`spare_cores`)
and tries again while it gave too little (`quiet_run`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from services.catalog.pools import POOLS
from services.catalog.workloads import CATALOG
from tests.stack import Stack

POOL_NAMES = set(POOLS)
T = TypeVar("T")

# Two busy processes got at least this many cores: the machine had its second to give.
QUIET_CORES = 1.6
# The GIL lets one process's threads keep at most one core busy (and a little of the
# clock's granularity).
ONE_CORE = 1.15


def spare_cores(seconds: float = 0.4) -> float:
    """How many cores two busy processes get right now: their CPU seconds over the wall
    time (2 on an idle 2-core machine, 1 while another program holds a core)."""
    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    before, started = os.times(), time.monotonic()
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    for spinner in spinners:
        spinner.wait()
    wall, after = time.monotonic() - started, os.times()
    cpu = after.children_user + after.children_system
    return (cpu - before.children_user - before.children_system) / wall


def quiet_run(
    measure: Callable[[], T],
    problem: Callable[[T], str | None],
    attempts: int = 4,
    budget_s: float = 150,
) -> T:
    """`measure()`'s result once `problem(result)` finds none; another attempt while one
    is found (within `attempts` and `budget_s`). Then: a failure if the machine had its
    second core to spare around one of them (the lesson did not hold on a quiet machine),
    else a skip saying what the machine gave (nothing could be shown)."""
    seen, quiet = [], False
    deadline = time.monotonic() + budget_s
    for _ in range(attempts):
        before = spare_cores()
        result = measure()
        after = spare_cores()
        found = problem(result)
        if found is None:
            return result
        quiet |= min(before, after) >= QUIET_CORES
        seen.append(f"{found} (spare cores {before:.1f} before, {after:.1f} after)")
        if time.monotonic() > deadline:
            break
    if quiet:
        pytest.fail("; ".join(seen))
    pytest.skip("the machine never had a second core to spare: " + "; ".join(seen))


def cores_busy(target: dict) -> float:
    """The cores the jobs' own CPU kept busy on average over the makespan."""
    return target["count"] * target["cpu_seconds_per_job"] / target["makespan_s"]


def run_experiment(stack: Stack, body: dict, timeout: float = 90) -> tuple[dict, bool]:
    """The finished experiment, and whether a poll saw a target part-way through while
    it ran (progress moving, not only a final count)."""
    answer = stack.http.post(f"{stack.url}/experiments", json=body, timeout=10)
    assert answer.status_code == 202, answer.text
    url = stack.url + answer.headers["Location"]
    seen_progress = False
    deadline = time.monotonic() + timeout
    while True:
        experiment = stack.http.get(url, timeout=10).json()
        assert set(experiment["progress"]) == set(body.get("pools", []) + body.get("local", []))
        if experiment["state"] == "running":
            seen_progress |= any(
                0 < p["done"] < p["total"] for p in experiment["progress"].values()
            )
        if experiment["state"] in ("succeeded", "failed"):
            assert experiment["state"] == "succeeded", experiment["error"]
            return experiment, seen_progress
        assert time.monotonic() < deadline, experiment
        time.sleep(0.2)


def check_consistent(experiment: dict, count: int) -> dict[str, dict]:
    report = experiment["report"]
    targets = {t["target"]: t for t in report["targets"]}
    for name, target in targets.items():
        assert target["count"] == count and target["errors"] == 0, target
        assert experiment["progress"][name] == {"done": count, "total": count}
        # The ideal is a bound: nothing beats it by more than a clock tick. The displayed
        # efficiency is clamped to 1; the raw ratio is what shows a wrong bound.
        assert 0 < target["efficiency_raw"] <= 1.05, target
        assert target["efficiency"] == min(1.0, target["efficiency_raw"])
        assert target["throughput_per_s"] > 0
        # Measured during this run on this host (the test stack's workers are local).
        assert target["peak_rss_bytes"] > 0, name
        if report["kind"] == "cpu":
            assert target["cpu_seconds_per_job"] > 0, name
        if target["cpu_seconds_per_job"] is not None:
            assert target["cores_busy"] == pytest.approx(cores_busy(target), abs=2e-3), name
        # No more jobs at once than there were, or than the concurrency allowed.
        assert 1 <= target["peak_in_flight"] <= min(count, target["concurrency"]), target
        lat = target["latency_s"]
        assert lat["p50"] <= lat["p95"] <= lat["p99"] <= target["makespan_s"] + 1e-6
        # Latency splits into the wait for a slot and the run itself.
        queue, run = target["queue_wait_s"], target["run_time_s"]
        assert 0 <= queue["p50"] <= queue["p99"] and 0 < run["p50"] <= run["p99"], name
        assert run["p50"] <= lat["p99"] + 1e-6 and queue["p50"] <= lat["p99"] + 1e-6
    topology = report["topology"]
    assert topology["cores"] >= 1 and topology["host"]
    assert topology["python"].count(".") == 2 and topology["celery"][0].isdigit()
    assert topology["redis_server"][0].isdigit()
    for pool in {t["target"] for t in report["targets"]} & POOL_NAMES:
        workers = topology["workers"][pool]
        assert workers and all(w["pid"] and w["concurrency"] >= 1 for w in workers), pool
        assert all(w["node"].startswith(f"{pool}-") for w in workers), pool
    assert report["verdict"], "a report always says something"
    return targets


def test_io_experiment_on_pools_and_local_executors(stack: Stack) -> None:
    body = {
        "workload": "sleep", "params": {"seconds": 0.1}, "count": 24,
        "pools": ["threads", "gevent"], "local": ["sequential", "threadpool", "asyncio"],
        "concurrency": 8,
    }  # fmt: skip
    experiment, seen_progress = run_experiment(stack, body)
    # sequential alone takes 24 x 0.1 s, many polls.
    assert seen_progress, "no poll saw a target part-way through"
    targets = check_consistent(experiment, 24)
    sequential = targets["sequential"]["makespan_s"]
    for overlapping in ("threads", "gevent", "threadpool", "asyncio"):
        speedup = sequential / targets[overlapping]["makespan_s"]
        assert speedup >= 3, f"{overlapping} only {speedup:.1f}x faster than sequential"
        # And the overlap the speedup comes from reached half of what the concurrency
        # allows (8 threads, 24 of gevent's 50): a pool running only 3 at once would
        # still be 3x faster than sequential.
        target = targets[overlapping]
        allowed = min(24, target["concurrency"])
        assert target["peak_in_flight"] >= allowed // 2, (overlapping, target["peak_in_flight"])
    assert targets["threadpool"]["concurrency"] == 8
    assert targets["gevent"]["concurrency"] == 50  # the test worker's
    assert experiment["report"]["topology"]["workers"]["gevent"]
    verdict = experiment["report"]["verdict"]
    assert any("of ideal" in line for line in verdict)
    # sleep computes nothing between its waits: no greenlet lesson is drawn from it.
    assert not any("switch only where one waits" in line for line in verdict), verdict
    assert targets["asyncio"]["ran_as"] == "async twin"

    svg = stack.http.get(f"{stack.url}/experiments/{experiment['id']}/chart.svg", timeout=30)
    assert svg.status_code == 200 and svg.headers["Content-Type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content[:500]
    png = stack.http.get(f"{stack.url}/experiments/{experiment['id']}/chart.png", timeout=30)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(300)  # a few attempts on a busy machine: quiet_run
def test_cpu_experiment_scales_only_with_processes(stack: Stack) -> None:
    body = {
        "workload": "cpu_hash", "params": {"rounds": 250_000}, "count": 8,
        "pools": ["threads", "prefork"], "local": ["sequential", "threadpool", "processpool"],
        "concurrency": 2,
    }  # fmt: skip

    # Each figure at its best over the attempts, as a noisy neighbour takes a core from
    # one target or another, never from the GIL-bound ones' limit.
    best: dict[str, float] = {}
    said_gil = []

    def measure() -> dict:
        experiment, _ = run_experiment(stack, body)
        targets = check_consistent(experiment, 8)
        # Whatever else runs on the machine: one process's threads keep at most one core
        # busy under the GIL (a busier machine only gives them less).
        for threads in ("threads", "threadpool"):
            assert cores_busy(targets[threads]) <= ONE_CORE, targets[threads]
        said_gil.append(any("GIL" in line for line in experiment["report"]["verdict"]))
        return experiment

    def problem(experiment: dict) -> str | None:
        """Processes kept more than one core busy, and finished sooner for it."""
        targets = {t["target"]: t for t in experiment["report"]["targets"]}
        figures = {
            "prefork cores busy": cores_busy(targets["prefork"]),
            "processpool cores busy": cores_busy(targets["processpool"]),
            "prefork/threads": targets["threads"]["makespan_s"] / targets["prefork"]["makespan_s"],
            "processpool/sequential": targets["sequential"]["makespan_s"]
            / targets["processpool"]["makespan_s"],
        }
        for name, value in figures.items():
            best[name] = round(max(value, best.get(name, 0.0)), 2)
        if min(best.values()) >= 1.3:
            return None
        return f"best so far {best}"

    experiment = quiet_run(measure, problem)
    targets = {t["target"]: t for t in experiment["report"]["targets"]}
    assert any(said_gil), "no verdict named the GIL"
    # Processes cost memory threads do not: the executor's two processes come on top of
    # the lab process the threads share.
    rss = {name: target["peak_rss_bytes"] for name, target in targets.items()}
    assert rss["processpool"] > rss["threadpool"], rss
    assert rss["prefork"] > rss["threads"], rss
    # And each job's process is on record: one for threads, several for processes.
    processes = {name: target["processes"] for name, target in targets.items()}
    assert processes["threads"] == processes["threadpool"] == processes["sequential"] == 1
    assert 1 < processes["prefork"] <= 2 and 1 < processes["processpool"] <= 2, processes

    # Listed, and comparable with another run.
    listed = stack.http.get(f"{stack.url}/experiments", timeout=10).json()["experiments"]
    assert experiment["id"] in [e["id"] for e in listed]
    again, _ = run_experiment(stack, {**body, "pools": ["prefork"], "local": []})
    comparison = stack.http.get(
        f"{stack.url}/experiments/compare", params={"ids": f"{experiment['id']},{again['id']}"},
        timeout=10,
    ).json()  # fmt: skip
    rows = {row["target"]: row for row in comparison["rows"]}
    first = targets["prefork"]["throughput_per_s"]
    last = next(t for t in again["report"]["targets"] if t["target"] == "prefork")
    assert rows["prefork"]["throughput_per_s"] == {
        experiment["id"]: first,
        again["id"]: last["throughput_per_s"],
    }
    ratio = rows["prefork"]["ratio_last_to_first"]
    assert ratio == pytest.approx(last["throughput_per_s"] / first, abs=1e-3)
    assert rows["threads"]["throughput_per_s"][again["id"]] is None
    assert rows["threads"]["ratio_last_to_first"] is None  # nothing to compare it with


def test_http_get_runs_on_the_asyncio_twin(stack: Stack) -> None:
    """http_get's async twin (httpx) against the API's own delay, beside the blocking one."""
    body = {
        "workload": "http_get", "params": {"url": f"{stack.url}/lab/delay?ms=100"},
        "count": 8, "local": ["sequential", "asyncio"], "concurrency": 8,
    }  # fmt: skip
    experiment, _ = run_experiment(stack, body)
    targets = check_consistent(experiment, 8)
    # Eight delays of 0.1 s at once, against one after the other.
    speedup = targets["sequential"]["makespan_s"] / targets["asyncio"]["makespan_s"]
    assert speedup >= 3, f"asyncio only {speedup:.1f}x faster than sequential"


def test_a_plain_cpu_workload_on_asyncio_runs_in_threads_by_name_or_ref(stack: Stack) -> None:
    """asyncio is offered for every workload: a plain function runs in its threads, and
    the report says so; a workload may be named by its `module:function` ref."""
    body = {
        "workload": "services.catalog.builtin:cpu_hash", "params": {"rounds": 20_000},
        "count": 4, "local": ["sequential", "asyncio"], "concurrency": 2,
    }  # fmt: skip
    experiment, _ = run_experiment(stack, body)
    # The experiment records the name the ref stands for.
    assert experiment["request"]["workload"] == experiment["report"]["workload"] == "cpu_hash"
    targets = check_consistent(experiment, 4)
    assert targets["asyncio"]["ran_as"] == "threads" and targets["sequential"]["ran_as"] is None
    assert targets["asyncio"]["processes"] == 1
    assert any(
        "asyncio ran cpu_hash in threads: it is not async def" in line
        for line in experiment["report"]["verdict"]
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"workload": "sleep", "params": {"seconds": 0.1}, "count": 5, "pools": ["fibers"]},
         "pools.0"),
        ({"workload": "sleep", "params": {"seconds": 0.1}, "count": 0, "pools": ["threads"]},
         "count"),
        ({"workload": "sleep", "params": {"seconds": 0.1}, "count": 10**6, "local": ["asyncio"]},
         "count"),
        ({"workload": "fibonacci", "params": {}, "count": 5, "local": ["asyncio"]}, "workload"),
        ({"workload": "nosuch.module:sleep", "count": 5, "local": ["asyncio"]}, "workload"),
        ({"workload": "sleep", "params": {"seconds": 0.1}, "count": 5}, "body"),
        ({"workload": "sleep", "params": {"seconds": 0.1}, "count": 5, "local": ["fibers"]},
         "local.0"),
        ({"workload": "sleep", "params": {"seconds": 99}, "count": 5, "pools": ["threads"]},
         "seconds"),
    ],
)  # fmt: skip
def test_bad_experiment_is_422(stack: Stack, body: dict, field: str) -> None:
    before = stack.http.get(f"{stack.url}/experiments", timeout=10).json()["experiments"]
    answer = stack.http.post(f"{stack.url}/experiments", json=body, timeout=10)
    assert answer.status_code == 422, answer.text
    assert answer.headers["Content-Type"] == "application/problem+json"
    problem = answer.json()
    assert any(e["field"] == field for e in problem.get("errors", [])) or field in problem["detail"]
    if field == "body":  # no field of its own to name: the detail says what is missing
        assert "at least one target in pools or local" in problem["detail"], problem
    if field == "workload":  # says what there is to choose from
        assert all(name in problem["detail"] for name in CATALOG), problem
    after = stack.http.get(f"{stack.url}/experiments", timeout=10).json()["experiments"]
    assert len(after) == len(before)


def test_chart_of_an_unknown_experiment_is_404(stack: Stack) -> None:
    answer = stack.http.get(f"{stack.url}/experiments/nope/chart.svg", timeout=10)
    assert answer.status_code == 404
    assert answer.headers["Content-Type"] == "application/problem+json"
