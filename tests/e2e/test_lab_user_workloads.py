"""The lab on a user's own workloads: a module of theirs, named in JOBRUNNER_WORKLOADS and
found on PYTHONPATH, as a user would start the stack. An async workload runs natively on
asyncio and on each thread's own loop elsewhere; a plain one runs on asyncio in threads;
the report says which. A spawned process pool finds the module too, and gevent is
refused an async workload before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_experiments import check_consistent, run_experiment
from tests.stack import Stack, workload_module

MODULE = "lab_user_jobs"
SOURCE = '''
    """A user's workloads, as they would write them."""

    import asyncio
    import time

    from jobrunner import workload


    @workload
    async def nap(ms: float = 100) -> float:
        """Awaits asyncio.sleep."""
        await asyncio.sleep(ms / 1000)
        return ms


    @workload
    def block(ms: float = 100) -> float:
        """Blocks in time.sleep."""
        time.sleep(ms / 1000)
        return ms


    @workload(kind="cpu")
    async def crunch(ms: float = 30) -> int:
        """Computes for `ms` of CPU without awaiting once."""
        until, spins = time.thread_time() + ms / 1000, 0
        while time.thread_time() < until:
            spins += 1
        return spins
'''


@pytest.fixture(scope="module")
def user_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("user-workloads")
    env = workload_module(folder, MODULE, SOURCE)
    stack = Stack(tmp_path_factory.mktemp("user-stack"), env_overrides=env)
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker("threads", 8)
        stack.start_worker("prefork", 1)
        stack.start_worker("experiments")
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def speedups(targets: dict[str, dict]) -> dict[str, float]:
    sequential = targets["sequential"]["makespan_s"]
    return {name: round(sequential / t["makespan_s"], 2) for name, t in targets.items()}


def test_an_async_workload_runs_natively_on_asyncio_and_everywhere_else(
    user_stack: Stack,
) -> None:
    body = {
        "workload": f"{MODULE}:nap", "params": {"ms": 100}, "count": 8, "pools": ["threads"],
        "local": ["sequential", "threadpool", "processpool", "asyncio"], "concurrency": 8,
    }  # fmt: skip
    experiment, _ = run_experiment(user_stack, body)
    # Named by its ref, recorded by its name.
    assert experiment["request"]["workload"] == experiment["report"]["workload"] == "nap"
    targets = check_consistent(experiment, 8)  # no job failed, in any process
    # The spawned process pool imported the user's module from the environment.
    assert targets["processpool"]["processes"] > 1
    assert targets["asyncio"]["ran_as"] == "coroutines"
    assert targets["asyncio"]["peak_in_flight"] > 1
    for name in ("threads", "sequential", "threadpool", "processpool"):
        assert targets[name]["ran_as"] == "event loop per thread", name
    gains = speedups(targets)
    assert all(gains[name] >= 3 for name in gains if name != "sequential"), gains
    verdict = experiment["report"]["verdict"]
    assert any("asyncio ran nap natively, its coroutines on one event loop" in v for v in verdict)


def test_a_plain_workload_runs_on_asyncio_in_threads_and_says_so(user_stack: Stack) -> None:
    body = {
        "workload": "block", "params": {"ms": 100}, "count": 8,
        "local": ["sequential", "asyncio"], "concurrency": 8,
    }  # fmt: skip
    experiment, _ = run_experiment(user_stack, body)
    targets = check_consistent(experiment, 8)
    assert targets["asyncio"]["ran_as"] == "threads"
    # Eight blocking waits overlapped on eight threads, not one after another on the loop.
    assert speedups(targets)["asyncio"] >= 3, targets
    assert any(
        "asyncio ran block in threads: it is not async def" in line
        for line in experiment["report"]["verdict"]
    )


def test_a_coroutine_that_never_awaits_runs_one_at_a_time(user_stack: Stack) -> None:
    body = {
        "workload": "crunch", "params": {"ms": 30}, "count": 4,
        "local": ["sequential", "asyncio"], "concurrency": 4,
    }  # fmt: skip
    experiment, _ = run_experiment(user_stack, body)
    targets = check_consistent(experiment, 4)
    asyncio_target = targets["asyncio"]
    assert asyncio_target["ran_as"] == "coroutines"
    assert asyncio_target["peak_in_flight"] == 1, asyncio_target
    (line,) = [v for v in experiment["report"]["verdict"] if v.startswith("asyncio ran crunch")]
    assert "one at a time although 4 were allowed" in line


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        # Greenlets share one thread, where asyncio runs one loop: refused, not measured.
        ({"workload": "nap", "count": 4, "pools": ["threads", "gevent"]}, "pools",
         "gevent cannot run nap"),
        # A ref must name a registered workload.
        ({"workload": f"{MODULE}:missing", "count": 4, "local": ["asyncio"]}, "workload",
         "nap"),
    ],
)  # fmt: skip
def test_what_the_lab_cannot_run_is_422(
    user_stack: Stack, body: dict, field: str, says: str
) -> None:
    before = user_stack.http.get(f"{user_stack.url}/experiments", timeout=10).json()
    answer = user_stack.http.post(f"{user_stack.url}/experiments", json=body, timeout=10)
    assert answer.status_code == 422, answer.text
    assert answer.headers["Content-Type"] == "application/problem+json"
    problem = answer.json()
    assert [e["field"] for e in problem["errors"]] == [field], problem
    assert says in problem["detail"], problem
    after = user_stack.http.get(f"{user_stack.url}/experiments", timeout=10).json()
    assert len(after["experiments"]) == len(before["experiments"])


def test_past_experiments_stay_readable_when_their_workload_leaves(user_stack: Stack) -> None:
    """An experiment keeps the name of the workload it ran; an API restarted without that
    module still lists and shows it (and refuses new ones on it)."""
    body = {"workload": "block", "params": {"ms": 10}, "count": 2, "local": ["sequential"]}
    experiment, _ = run_experiment(user_stack, body)
    url = f"{user_stack.url}/experiments"

    def restart_api(workloads: str) -> None:
        assert user_stack.api is not None
        user_stack.stop_process(user_stack.api)
        user_stack.overrides["JOBRUNNER_WORKLOADS"] = workloads
        user_stack.start_api()
        user_stack.wait_api_ready(60)

    restart_api("")
    try:
        listed = user_stack.http.get(url, timeout=10)
        assert listed.status_code == 200, listed.text
        assert experiment["id"] in [e["id"] for e in listed.json()["experiments"]]
        shown = user_stack.http.get(f"{url}/{experiment['id']}", timeout=10).json()
        assert shown["report"]["workload"] == shown["request"]["workload"] == "block"
        again = user_stack.http.post(url, json=body, timeout=10)
        assert again.status_code == 422, again.text
        listed_names = again.json()["detail"].split("it has: ")[1].split(" (or")[0].split(", ")
        assert "sleep" in listed_names and "block" not in listed_names, listed_names
    finally:
        restart_api(MODULE)


def test_the_client_compares_an_async_workload_on_the_pools_that_can_run_it(
    user_stack: Stack,
) -> None:
    """/workloads lists the pools that can run each workload; Client.compare, given no
    pools, runs those (not gevent for an async workload, which the API would refuse)."""
    from jobrunner import Client

    catalog = {
        w["name"]: w for w in user_stack.http.get(f"{user_stack.url}/workloads").json()["workloads"]
    }
    assert catalog["nap"]["pools"] == ["threads", "prefork"]
    assert catalog["block"]["pools"] == ["threads", "prefork", "gevent"]
    with Client(
        user_stack.url, api_key=user_stack.http.headers["Authorization"].split()[-1]
    ) as client:
        experiment = client.compare(f"{MODULE}:nap", {"ms": 20}, count=4, concurrency=4)
    assert set(experiment["request"]["pools"]) == {"threads", "prefork"}
    assert experiment["state"] == "succeeded", experiment.get("error")
