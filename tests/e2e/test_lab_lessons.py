"""The lab's lessons beyond the tutorial, on the real stack: CPU work that releases the GIL
scales on threads (pure-Python CPU work does not), greenlets fall behind threads on jobs
that compute between waits, and processes pay for isolation in memory. Each verdict
sentence is checked against the numbers of its own report: said when they back it, and
only then.

A lesson about cores needs a machine with a second core to give: see `quiet_run`.
"""

from __future__ import annotations

import pytest

from services.core.formatting import format_mib
from tests.e2e.test_experiments import (
    ONE_CORE,
    check_consistent,
    cores_busy,
    quiet_run,
    run_experiment,
)
from tests.stack import Stack


@pytest.mark.timeout(300)  # a few attempts on a busy machine: quiet_run
def test_work_that_releases_the_gil_scales_on_threads(stack: Stack) -> None:
    local = {"count": 8, "local": ["sequential", "threadpool", "processpool"], "concurrency": 2}
    nogil_body = {"workload": "cpu_hash_nogil", "params": {"mebibytes": 8, "rounds": 12}, **local}
    gil_body = {"workload": "cpu_hash", "params": {"rounds": 150_000}, **local}

    def measure() -> tuple[dict, dict]:
        nogil, _ = run_experiment(stack, nogil_body)
        gil, _ = run_experiment(stack, gil_body)
        for experiment in (nogil, gil):
            check_consistent(experiment, 8)
            check_said_as_measured(experiment)
        # Whatever the machine's load: under the GIL, one core at most, and no claim
        # that the work let go of it.
        gil_threads = targets_of(gil)["threadpool"]
        assert cores_busy(gil_threads) <= ONE_CORE, gil_threads
        assert not any("released the GIL" in line for line in gil["report"]["verdict"])
        return nogil, gil

    def problem(both: tuple[dict, dict]) -> str | None:
        """Threads gained on cpu_hash_nogil over sequential, and not on cpu_hash; they
        kept more cores busy on it; and the verdict said why."""
        runs = [targets_of(e) for e in both]
        speedup = [t["sequential"]["makespan_s"] / t["threadpool"]["makespan_s"] for t in runs]
        busy = [cores_busy(t["threadpool"]) for t in runs]
        said = any("released the GIL" in line for line in both[0]["report"]["verdict"])
        if speedup[0] > 1.3 * speedup[1] and busy[0] > 1.3 * busy[1] and said:
            return None
        return (
            f"threadpool's speedup on cpu_hash_nogil {speedup[0]:.2f}x, on cpu_hash "
            f"{speedup[1]:.2f}x; cores busy {busy[0]:.2f} and {busy[1]:.2f}; said: {said}"
        )

    quiet_run(measure, problem)


def released_gil_backed(targets: list[dict]) -> bool:
    """Whether the numbers of one group (pools, or local executors) back the sentence
    'the work released the GIL': threads kept 1.3 cores busy, near processes if any."""
    threads = [t for t in targets if t["target"] in ("threads", "threadpool", "asyncio")]
    processes = [t for t in targets if t["target"] in ("prefork", "processpool")]
    if not threads:
        return False
    busiest = max(threads, key=cores_busy)
    if busiest["concurrency"] < 2 or cores_busy(busiest) < 1.3:
        return False
    if not processes:
        return True
    fastest = min(processes, key=lambda t: t["makespan_s"])
    return busiest["makespan_s"] / fastest["makespan_s"] < 1.3


def check_said_as_measured(experiment: dict) -> None:
    """The GIL-release sentence is in the verdict exactly when the numbers back it."""
    report = experiment["report"]
    said = sum("released the GIL" in line for line in report["verdict"])
    backed = sum(
        released_gil_backed([t for t in report["targets"] if t["kind"] == kind])
        for kind in ("pool", "local")
    )
    assert said == backed, (report["verdict"], report["targets"])


def targets_of(experiment: dict) -> dict[str, dict]:
    return {t["target"]: t for t in experiment["report"]["targets"]}


def test_greenlets_fall_behind_threads_on_work_between_waits(stack: Stack) -> None:
    body = {
        "workload": "mixed", "params": {"cpu_ms": 10, "io_ms": 40}, "count": 40,
        "pools": ["threads", "gevent"],
    }  # fmt: skip
    experiment, _ = run_experiment(stack, body)
    targets = check_consistent(experiment, 40)
    gevent, threads = targets["gevent"], targets["threads"]
    # Greenlets start all 40 at once, and each one's 10 ms of CPU runs to its end while
    # every other one's wakeup waits; a thread is preempted every 5 ms.
    assert gevent["peak_in_flight"] > threads["peak_in_flight"]
    slower = gevent["run_time_s"]["p50"] / threads["run_time_s"]["p50"]
    assert slower >= 2, (gevent, threads)
    (line,) = [line for line in experiment["report"]["verdict"] if "gevent's jobs ran" in line]
    assert f"{slower:.1f}x as long as on threads" in line
    assert "greenlets switch only where one waits" in line
    assert f"with {gevent['peak_in_flight']} in flight" in line


def test_processes_pay_for_isolation_in_memory(stack: Stack) -> None:
    body = {
        "workload": "allocate", "params": {"mebibytes": 32, "hold_ms": 300}, "count": 4,
        "pools": ["threads", "prefork"], "local": ["threadpool", "processpool"],
        "concurrency": 2,
    }  # fmt: skip
    experiment, _ = run_experiment(stack, body)
    targets = check_consistent(experiment, 4)

    def per_job(name: str) -> float:
        target = targets[name]
        return target["peak_rss_bytes"] / target["peak_in_flight"]

    # Each process carries an interpreter; threads share the one they run in.
    assert per_job("processpool") > 1.1 * per_job("threadpool"), targets
    assert per_job("prefork") > 1.1 * per_job("threads"), targets
    (line,) = [line for line in experiment["report"]["verdict"] if "peak RSS per" in line]
    for name, target in targets.items():
        assert f"{name} {format_mib(per_job(name))} MB ({target['peak_in_flight']} at once)" in line
    cheapest_process = min(("prefork", "processpool"), key=per_job)
    cheapest_thread = min(("threads", "threadpool"), key=per_job)
    ratio = per_job(cheapest_process) / per_job(cheapest_thread)
    assert (
        f"isolation costs: {cheapest_process} holds {ratio:.1f}x the memory per concurrent "
        f"job of {cheapest_thread}"
    ) in line
