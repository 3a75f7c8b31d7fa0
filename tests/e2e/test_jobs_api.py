"""The jobs API end to end: real HTTP to gunicorn, real Celery workers, real Redis."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest

from services.catalog.pools import POOLS
from tests.stack import Stack

PARAMS = {
    "noop": {"value": {"hello": [1, 2]}},
    "sleep": {"seconds": 0.05},
    "cpu_hash": {"rounds": 1000},
    "cpu_primes": {"below": 1000},
}


def expected_result(workload: str, params: dict) -> object:
    if workload == "noop":
        return params["value"]
    if workload == "sleep":
        return params["seconds"]
    if workload == "cpu_hash":
        digest = b"jobrunner"
        for _ in range(params["rounds"]):
            digest = hashlib.sha256(digest).digest()
        return digest.hex()
    if workload == "cpu_primes":
        return 168  # primes below 1000
    raise AssertionError(workload)


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_every_workload_runs_on_every_pool(stack: Stack, pool: str) -> None:
    jobs = {w: stack.submit(w, p, pool=pool) for w, p in PARAMS.items()}
    delay_url = f"{stack.url}/lab/delay?ms=30"
    jobs["http_get"] = stack.submit("http_get", {"url": delay_url}, pool=pool)
    records = dict(zip(jobs, stack.wait_for(j["id"] for j in jobs.values()), strict=True))
    for workload, record in records.items():
        assert record["state"] == "succeeded", record
        assert record["pool"] == pool and record["pool_chosen_by"] == "client"
        assert record["worker_node"].startswith(f"{pool}-")
        assert record["worker_host"] == socket.gethostname()  # the test's workers are here
        assert record["worker_pid"] > 0 and record["attempts"] == 1
        # received_at travels from the worker's consumer to the slot that ran the job.
        assert (
            record["submitted_at"]
            <= record["received_at"]
            <= record["started_at"]
            <= record["finished_at"]
        )
        if workload != "http_get":
            assert record["result"] == expected_result(workload, PARAMS[workload])
    assert records["http_get"]["result"]["status"] == 200


def test_submit_answers_202_with_location(stack: Stack) -> None:
    response = stack.http.post(
        f"{stack.url}/jobs", json={"workload": "noop", "params": {"value": 1}}, timeout=10
    )
    assert response.status_code == 202
    record = response.json()
    assert response.headers["Location"] == f"/jobs/{record['id']}"
    assert record["state"] == "queued"
    followed = stack.http.get(stack.url + response.headers["Location"], timeout=10)
    assert followed.status_code == 200 and followed.json()["id"] == record["id"]


@pytest.mark.parametrize(
    ("workload", "params", "pool"),
    [("sleep", {"seconds": 0}, "gevent"), ("cpu_primes", {"below": 10}, "prefork")],
)
def test_default_pool_follows_the_workload_kind(
    stack: Stack, workload: str, params: dict, pool: str
) -> None:
    record = stack.submit(workload, params)
    assert record["pool"] == pool and record["pool_chosen_by"] == "default"
    (done,) = stack.wait_for([record["id"]])
    assert done["state"] == "succeeded" and done["worker_node"].startswith(f"{pool}-")


def test_a_failing_workload_is_reported_as_failed(stack: Stack) -> None:
    # Port 9 (discard) on loopback refuses the connection: a real network error.
    record = stack.submit("http_get", {"url": "http://127.0.0.1:9/", "timeout": 2}, pool="threads")
    (done,) = stack.wait_for([record["id"]])
    assert done["state"] == "failed"
    assert done["error"]["type"] == "ConnectionError"
    assert done["result"] is None


def test_listing_is_newest_first_and_pages_without_gaps(stack: Stack) -> None:
    ids = [stack.submit("noop", {"value": i}, pool="threads")["id"] for i in range(5)]
    stack.wait_for(ids)
    seen: list[str] = []
    cursor = None
    while len(seen) < 5:
        query = {"workload": "noop", "pool": "threads", "limit": 2}
        if cursor is not None:
            query["cursor"] = cursor
        page = stack.http.get(f"{stack.url}/jobs", params=query, timeout=10).json()
        assert len(page["jobs"]) <= 2
        assert all(j["workload"] == "noop" and j["pool"] == "threads" for j in page["jobs"])
        seen.extend(j["id"] for j in page["jobs"])
        cursor = page["next_cursor"]
        assert cursor is not None or len(seen) >= 5, "paging ended before our five jobs"
    assert len(seen) == len(set(seen))
    assert seen[:5] == list(reversed(ids))

    succeeded = stack.http.get(
        f"{stack.url}/jobs", params={"state": "succeeded", "limit": 500}, timeout=10
    ).json()
    assert {j["state"] for j in succeeded["jobs"]} == {"succeeded"}
    assert set(ids) <= {j["id"] for j in succeeded["jobs"]}


def test_cancel_of_a_queued_job_means_it_never_runs(stack: Stack) -> None:
    # prefork has 2 slots: two long jobs fill them, the third waits in the queue.
    blockers = [stack.submit("sleep", {"seconds": 1.5}, pool="prefork") for _ in range(2)]
    stack.wait_for([b["id"] for b in blockers], states={"running"})
    queued = stack.submit("noop", {"value": "never"}, pool="prefork")
    response = stack.http.delete(f"{stack.url}/jobs/{queued['id']}", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    stack.wait_for([b["id"] for b in blockers])
    # Give the worker the time it needs to take the message it no longer has to run.
    time.sleep(0.5)
    record = stack.job(queued["id"])
    assert record["state"] == "cancelled"
    assert record["started_at"] is None and record["attempts"] == 0 and record["result"] is None


def test_cancel_of_a_running_prefork_job_terminates_it(stack: Stack) -> None:
    record = stack.submit("sleep", {"seconds": 30}, pool="prefork")
    (running,) = stack.wait_for([record["id"]], states={"running"})
    response = stack.http.delete(f"{stack.url}/jobs/{record['id']}", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    # Both slots of the pool are free again, long before the job's 30 s were up.
    assert_prefork_slots_free(stack, before=running["started_at"] + 30)
    assert stack.job(record["id"])["state"] == "cancelled"


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_cancel_of_a_running_thread_job_is_refused_honestly(stack: Stack, pool: str) -> None:
    record = stack.submit("sleep", {"seconds": 1}, pool=pool)
    stack.wait_for([record["id"]], states={"running"})
    response = stack.http.delete(f"{stack.url}/jobs/{record['id']}", timeout=10)
    assert response.status_code == 409
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "prefork" in response.json()["detail"]
    assert stack.job(record["id"])["cancel_requested"] is True
    (done,) = stack.wait_for([record["id"]])
    assert done["state"] == "succeeded"


def test_pools_lists_live_workers_and_capabilities(stack: Stack) -> None:
    pools = {p["name"]: p for p in stack.http.get(f"{stack.url}/pools", timeout=10).json()["pools"]}
    assert set(pools) == set(POOLS)
    started = {w.node: w.concurrency for w in stack.workers}
    for name, pool in pools.items():
        assert pool["queue"] == f"pool.{name}"
        assert pool["workers"], f"no live worker listed for {name}"
        # Each worker the test stack started for this pool, by its node, at its concurrency.
        for worker in pool["workers"]:
            assert worker["node"] in started and worker["node"].startswith(f"{name}-")
            assert worker["concurrency"] == started[worker["node"]]
    # What each pool can enforce, stated here rather than read from the table the endpoint
    # itself serves: only a process of its own can be killed, or frees its memory.
    processes_only = {"prefork": True, "threads": False, "gevent": False}
    for name, can in processes_only.items():
        assert pools[name]["capabilities"] == {
            "hard_time_limit": can, "terminate_running": can, "memory_isolation": can,
        }, name  # fmt: skip


def test_workloads_are_listed_with_kind_and_schema(stack: Stack) -> None:
    body = stack.http.get(f"{stack.url}/workloads", timeout=10).json()
    catalog = {w["name"]: w for w in body["workloads"]}
    assert set(catalog) == {
        "noop", "sleep", "http_get", "cpu_hash", "cpu_primes", "cpu_hash_nogil", "mixed",
        "allocate",
    }  # fmt: skip
    assert len(body["fingerprint"]) == 12
    assert catalog["sleep"]["kind"] == "io" and catalog["cpu_hash"]["kind"] == "cpu"
    assert catalog["sleep"]["params_schema"]["properties"]["seconds"]["maximum"] == 60


def test_health_readiness_and_openapi(stack: Stack) -> None:
    assert stack.http.get(f"{stack.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert stack.http.get(f"{stack.url}/readyz", timeout=10).status_code == 200
    document = stack.http.get(f"{stack.url}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1")
    for path in ("/jobs", "/jobs/{job_id}", "/pools", "/workloads", "/readyz"):
        assert path in document["paths"], path
    post = document["paths"]["/jobs"]["post"]
    assert "202" in post["responses"] and "422" in post["responses"]


def test_lab_delay_answers_after_the_delay_asked(stack: Stack) -> None:
    started = time.monotonic()
    answer = stack.http.get(f"{stack.url}/lab/delay?ms=300", timeout=10)
    assert answer.status_code == 200 and answer.json() == {"waited_ms": 300}
    # The promise is itself in milliseconds: never sooner than asked (http_get jobs wait
    # on it). A lower bound, which no busy machine can break.
    assert time.monotonic() - started >= 0.3


def test_a_cancelled_running_prefork_job_can_be_retried_and_finishes(stack: Stack) -> None:
    """Cancelling a running prefork job revokes its Celery task in every worker; the retry
    must travel under a task id of its own, or workers discard it and it stays queued."""
    record = stack.submit("sleep", {"seconds": 2}, pool="prefork")
    stack.wait_for([record["id"]], states={"running"})
    cancelled = stack.http.delete(f"{stack.url}/jobs/{record['id']}", timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

    retried = stack.http.post(f"{stack.url}/jobs/{record['id']}/retry", timeout=10)
    assert retried.status_code == 202, retried.text
    (done,) = stack.wait_for([record["id"]], timeout=30)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2


def test_cancel_of_a_retried_running_job_stops_the_run_it_asked_for(stack: Stack) -> None:
    """The cancel revokes the task id of the run in progress, not the job id of the first."""
    record = stack.submit("sleep", {"seconds": 30}, pool="prefork")
    stack.wait_for([record["id"]], states={"running"})
    assert stack.http.delete(f"{stack.url}/jobs/{record['id']}", timeout=10).status_code == 200
    assert stack.http.post(f"{stack.url}/jobs/{record['id']}/retry", timeout=10).status_code == 202
    (running,) = stack.wait_for([record["id"]], states={"running"}, timeout=30)
    assert running["attempts"] == 2
    assert stack.http.delete(f"{stack.url}/jobs/{record['id']}", timeout=10).status_code == 200
    # Both prefork slots are free again, long before the retried run's 30 s.
    assert_prefork_slots_free(stack, before=running["started_at"] + 30)
    assert stack.job(record["id"])["state"] == "cancelled"


def assert_prefork_slots_free(stack: Stack, before: float) -> None:
    """Two new prefork jobs run side by side, and finish before `before`: no slot is
    still held by a cancelled job."""
    after = [stack.submit("sleep", {"seconds": 1}, pool="prefork")["id"] for _ in range(2)]
    first, second = stack.wait_for(after, timeout=20)
    assert first["state"] == second["state"] == "succeeded"
    assert (
        second["started_at"] < first["finished_at"] and first["started_at"] < second["finished_at"]
    )
    assert max(first["finished_at"], second["finished_at"]) < before
