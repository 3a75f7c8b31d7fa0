"""A user's own workloads, end to end: a package written to a temporary folder, named in
JOBRUNNER_WORKLOADS, run over HTTP on every pool by real workers; what a worker started
without it (or with another version of it) does and how /pools shows it; and a bad
module stopping the API and the workers at start in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devstack.compose import PROJECT_ROOT
from services.devstack.redis_server import free_port
from tests.stack import Stack

MODULE = "shopjobs.jobs"
USER_WORKLOADS = ["fetch_later", "flaky", "price", "tags"]

JOBS = '''
"""A user's workloads, as a user writes them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field

from jobrunner import workload


@workload
def price(
    item: str,
    quantity: Annotated[int, Field(ge=1, le=100)] = 1,
    unit_cents: int = 250,
) -> dict:
    """Prices an order line."""
    return {"item": item, "total_cents": quantity * unit_cents, "pid": os.getpid()}


@workload
async def fetch_later(delay: Annotated[float, Field(ge=0, le=5)] = 0.01, label: str = "") -> dict:
    """Waits on asyncio, then answers."""
    await asyncio.sleep(delay)
    return {"label": label, "loop": type(asyncio.get_running_loop()).__name__}


@workload
def tags(words: list[str]) -> set[str]:
    """Returns a set, which JSON cannot hold."""
    return set(words)


@workload(default_pool="prefork", time_limit=30, max_retries=2, retry_on=(ConnectionError,))
def flaky(counter: str, fail_times: int = 1) -> int:
    """Fails its first `fail_times` attempts as the network would, then succeeds."""
    path = Path(counter)
    attempt = (int(path.read_text()) if path.exists() else 0) + 1
    path.write_text(str(attempt))
    if attempt <= fail_times:
        raise ConnectionError(f"attempt {attempt}: the network blinked")
    return attempt
'''

# Another version of the same package: `price` takes another parameter, `refund` is new,
# the rest are gone.
JOBS_V2 = '''
from jobrunner import workload


@workload
def price(item: str, quantity: int = 1, currency: str = "EUR") -> dict:
    """Prices an order line, in a currency."""
    return {"item": item, "currency": currency}


@workload
def refund(order: str) -> str:
    """Refunds an order."""
    return order
'''


def write_package(folder: Path, jobs: str) -> Path:
    package = folder / "shopjobs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(textwrap.dedent(jobs))
    return folder


def python_path(*folders: Path) -> str:
    return os.pathsep.join([*(str(f) for f in folders), os.environ.get("PYTHONPATH", "")])


def user_env(folder: Path) -> dict[str, str]:
    return {"JOBRUNNER_WORKLOADS": MODULE, "PYTHONPATH": python_path(folder)}


@pytest.fixture(scope="module")
def user_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_package(tmp_path_factory.mktemp("user-package"), JOBS)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, user_package: Path) -> Iterator[Stack]:
    """Redis, the API and a worker per pool, all with the user's package."""
    stack = Stack(tmp_path_factory.mktemp("user-stack"), env_overrides=user_env(user_package))
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker("threads", 4)
        stack.start_worker("prefork", 2)
        stack.start_worker("gevent", 20)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def post_job(stack: Stack, body: dict) -> tuple[int, dict]:
    response = stack.http.post(f"{stack.url}/jobs", json=body, timeout=10)
    return response.status_code, response.json()


def run(stack: Stack, workload: str, params: dict, **options: object) -> dict:
    job = stack.submit(workload, params, **options)
    return stack.wait_for([job["id"]], timeout=60)[0]


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
def test_sync_workload_runs_on_every_pool(shop: Stack, pool: str) -> None:
    record = run(shop, "price", {"item": "tea", "quantity": 3}, pool=pool)
    assert record["state"] == "succeeded", record
    assert record["result"]["total_cents"] == 750
    assert record["pool"] == pool and record["worker_node"].startswith(f"{pool}-")


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_async_workload_runs_on_threads_and_prefork(shop: Stack, pool: str) -> None:
    jobs = [
        shop.submit("fetch_later", {"delay": 0.05, "label": str(i)}, pool=pool) for i in range(4)
    ]
    records = shop.wait_for([j["id"] for j in jobs], timeout=60)
    assert [r["state"] for r in records] == ["succeeded"] * 4, records
    assert [r["result"]["label"] for r in records] == ["0", "1", "2", "3"]
    assert all(r["result"]["loop"].endswith("EventLoop") for r in records)


def test_async_workload_left_to_default_goes_to_threads(shop: Stack) -> None:
    record = run(shop, "fetch_later", {})
    assert record["state"] == "succeeded", record
    assert (record["pool"], record["pool_chosen_by"]) == ("threads", "default")


def test_async_workload_on_gevent_is_422_saying_where_it_can_run(shop: Stack) -> None:
    status, problem = post_job(shop, {"workload": "fetch_later", "params": {}, "pool": "gevent"})
    assert status == 422, problem
    assert [e["field"] for e in problem["errors"]] == ["pool"]
    message = problem["errors"][0]["message"]
    assert "async" in message and "one OS thread" in message
    assert message.endswith("pools that can: threads, prefork")


def test_workload_defaults_apply_when_the_job_leaves_them_out(shop: Stack, tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    record = run(shop, "flaky", {"counter": str(counter)})
    # @workload(default_pool="prefork", time_limit=30, max_retries=2, retry_on=ConnectionError)
    assert (record["pool"], record["time_limit"], record["max_retries"]) == ("prefork", 30, 2)
    assert record["state"] == "succeeded", record
    assert record["result"] == 2 and record["attempts"] == 2
    assert [e["type"] for e in record["attempt_errors"]] == ["ConnectionError"]

    # What the job says wins: no retries, so the first failure is the outcome.
    counter.unlink()
    record = run(shop, "flaky", {"counter": str(counter)}, max_retries=0)
    assert record["state"] == "failed" and record["attempts"] == 1, record
    assert record["error"]["type"] == "ConnectionError"


def test_a_default_time_limit_on_a_pool_that_cannot_kill_is_422_with_a_way_out(
    shop: Stack, tmp_path: Path
) -> None:
    body = {"workload": "flaky", "params": {"counter": str(tmp_path / "n")}, "pool": "threads"}
    status, problem = post_job(shop, body)
    assert status == 422, problem
    assert problem["errors"][0]["field"] == "time_limit"
    assert "flaky's default time_limit of 30 s" in problem["detail"]
    assert '"time_limit": null' in problem["detail"]
    status, accepted = post_job(shop, {**body, "time_limit": None, "params": {
        "counter": str(tmp_path / "n"), "fail_times": 0}})  # fmt: skip
    assert status == 202, accepted
    assert shop.wait_for([accepted["id"]])[0]["state"] == "succeeded"


def test_a_result_json_cannot_hold_fails_the_job_once(shop: Stack) -> None:
    record = run(shop, "tags", {"words": ["a", "b"]}, pool="threads", max_retries=2)
    assert record["state"] == "failed", record
    assert record["error"]["type"] == "result_not_json"
    assert "set" in record["error"]["message"]
    assert record["attempts"] == 1
    # The worker goes on.
    assert run(shop, "price", {"item": "x"}, pool="threads")["state"] == "succeeded"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"item": "tea", "quantity": 0}, "params.quantity"),
        ({"item": "tea", "colour": "red"}, "params.colour"),
        ({"quantity": 2}, "params.item"),
        ({"item": "tea", "quantity": "many"}, "params.quantity"),
    ],
    ids=["bound", "unknown", "missing", "type"],
)
def test_params_that_do_not_fit_the_signature_are_422_naming_the_field(
    shop: Stack, params: dict, field: str
) -> None:
    status, problem = post_job(shop, {"workload": "price", "params": params})
    assert status == 422, problem
    assert problem["type"] and problem["status"] == 422
    assert [e["field"] for e in problem["errors"]] == [field]


def test_workloads_lists_the_users_with_async_and_ref(shop: Stack) -> None:
    listing = shop.http.get(f"{shop.url}/workloads", timeout=10).json()
    by_name = {w["name"]: w for w in listing["workloads"]}
    assert set(USER_WORKLOADS) <= set(by_name)
    assert "sleep" in by_name  # the built-ins are still there
    assert by_name["price"]["ref"] == f"{MODULE}:price"
    assert by_name["price"]["description"] == "Prices an order line."
    assert by_name["price"]["params_schema"]["required"] == ["item"]
    assert {n: by_name[n]["is_async"] for n in USER_WORKLOADS} == {
        "fetch_later": True,
        "flaky": False,
        "price": False,
        "tags": False,
    }
    assert by_name["flaky"]["default_pool"] == "prefork"
    assert by_name["fetch_later"]["default_pool"] == "threads"

    # Every worker has the same catalog as the API: nothing to show on /pools.
    pools = shop.http.get(f"{shop.url}/pools", timeout=10).json()
    assert pools["catalog"] == listing["fingerprint"]
    assert pools["catalog_matches"] and pools["catalog_mismatch"] == []
    workers = [w for pool in pools["pools"] for w in pool["workers"]]
    assert len(workers) == 3
    assert all(w["catalog"] == listing["fingerprint"] and w["catalog_matches"] for w in workers)


# -- workers whose catalog is not the API's ----------------------------------------------


@pytest.fixture(scope="module")
def mixed_stack(tmp_path_factory: pytest.TempPathFactory, user_package: Path) -> Iterator[Stack]:
    """The API and a threads worker with the user's package; a prefork worker started
    without it (no JOBRUNNER_WORKLOADS); a gevent worker with another version of it."""
    other_version = write_package(tmp_path_factory.mktemp("v2"), JOBS_V2)
    stack = Stack(tmp_path_factory.mktemp("mixed"), env_overrides=user_env(user_package))
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker("threads", 2)
        without = stack.worker_process("prefork", 1)
        without.env = {**without.env, "JOBRUNNER_WORKLOADS": ""}
        stack.start(without)
        older = stack.worker_process("gevent", 10)
        older.env = {**older.env, "PYTHONPATH": python_path(other_version)}
        stack.start(older)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def test_a_worker_without_the_workload_fails_its_job_once_and_goes_on(
    mixed_stack: Stack,
) -> None:
    without = next(w for w in mixed_stack.workers if w.pool == "prefork")
    record = run(mixed_stack, "price", {"item": "tea"}, pool="prefork", max_retries=3)
    assert record["state"] == "failed", record
    assert record["error"]["type"] == "workload_not_on_worker"
    assert without.node in record["error"]["message"]
    assert "'price'" in record["error"]["message"]
    assert record["attempts"] == 1 and record["worker_node"] == without.node

    # Not a crash: the same worker runs what it has.
    assert without.alive()
    after = run(mixed_stack, "sleep", {"seconds": 0.01}, pool="prefork")
    assert after["state"] == "succeeded" and after["worker_node"] == without.node


def test_pools_names_what_each_worker_lacks_has_extra_or_has_changed(
    mixed_stack: Stack,
) -> None:
    node = {w.pool: w.node for w in mixed_stack.workers}
    fingerprint = mixed_stack.http.get(f"{mixed_stack.url}/workloads", timeout=10).json()[
        "fingerprint"
    ]
    pools = mixed_stack.http.get(f"{mixed_stack.url}/pools", timeout=10).json()
    by_pool = {p["name"]: p for p in pools["pools"]}
    assert pools["catalog"] == fingerprint
    assert not pools["catalog_matches"]

    threads = by_pool["threads"]
    assert threads["catalog_matches"] and threads["catalog_mismatch"] == []
    assert threads["workers"][0]["catalog"] == fingerprint

    prefork = by_pool["prefork"]
    assert not prefork["catalog_matches"]
    assert prefork["workers"][0]["catalog"] != fingerprint
    assert prefork["workers"][0]["catalog_matches"] is False
    lacking = {
        "worker": node["prefork"],
        "catalog": prefork["workers"][0]["catalog"],
        "missing": USER_WORKLOADS,
        "extra": [],
        "changed": [],
    }
    assert prefork["catalog_mismatch"] == [lacking]

    older = by_pool["gevent"]["catalog_mismatch"]
    assert [(m["worker"], m["missing"], m["extra"], m["changed"]) for m in older] == [
        (node["gevent"], ["fetch_later", "flaky", "tags"], ["refund"], ["price"])
    ]
    assert sorted(m["worker"] for m in pools["catalog_mismatch"]) == sorted(
        [node["prefork"], node["gevent"]]
    )


# -- a bad catalog stops the API and the workers at start --------------------------------


def start_and_fail(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `command` as `make run` would, expecting it to stop by itself."""
    return subprocess.run(
        [sys.executable, *command],
        env={**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(free_port()), **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


BAD_MODULES = {
    "duplicate": ("from jobrunner import workload\n\n@workload\ndef sleep() -> None: ...\n",
                  "two workloads are named 'sleep'"),
    "variadic": ("from jobrunner import workload\n\n@workload\ndef spread(*items) -> None: ...\n",
                 "*items cannot be described as JSON"),
    "async_on_gevent": ("from jobrunner import workload\n\n@workload(default_pool='gevent')\n"
                        "async def wait() -> None: ...\n", "default_pool='gevent'"),
    "broken": ("raise RuntimeError('no config\\nfound')\n",
               "importing workloads from 'broken' failed: RuntimeError: no config found"),
}  # fmt: skip


@pytest.mark.parametrize(
    "command", [["-m", "api"], ["-m", "worker", "--pool", "threads"]], ids=["api", "worker"]
)
@pytest.mark.parametrize("module", ["no_such_module", *BAD_MODULES])
def test_a_bad_workload_module_stops_the_process_in_one_line(
    command: list[str], module: str, tmp_path: Path
) -> None:
    expected = f"no module {module!r}; install its package, or add its folder to PYTHONPATH"
    if module in BAD_MODULES:
        source, expected = BAD_MODULES[module]
        (tmp_path / f"{module}.py").write_text(source)
    env = {"JOBRUNNER_WORKLOADS": module, "PYTHONPATH": python_path(tmp_path)}
    ended = start_and_fail(command, env)
    assert ended.returncode != 0
    assert "Traceback" not in ended.stderr
    lines = ended.stderr.strip().splitlines()
    assert len(lines) == 1, ended.stderr
    assert lines[0].startswith("jobrunner: ") and expected in lines[0], lines[0]
    assert module in lines[0]
