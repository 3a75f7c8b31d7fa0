"""The Python client (`from jobrunner import Client`) against the real stack: every call a
user makes, and every error as the exception a user catches."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import services.client.client
from jobrunner import ApiError, BatchRejected, Client, JobFailed
from tests.stack import TEST_KEYS, Stack

ROOT = Path(__file__).resolve().parents[2]
REFUSED_URL = "http://127.0.0.1:9/"  # nothing listens on the discard port: connection refused


@pytest.fixture
def client(stack: Stack) -> Client:
    return Client(stack.url, api_key=TEST_KEYS["admin"][1])


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
def test_submit_wait_and_result_on_every_pool(client: Client, pool: str) -> None:
    job = client.submit("noop", value={"pool": pool}, pool=pool)
    assert job.state == "queued" and job.record["pool"] == pool
    assert job.result(timeout=30) == {"pool": pool}
    assert job.state == "succeeded" and job.done
    assert job.record["worker_node"].startswith(f"{pool}-")
    # The params as a dict say the same; options stay out of the params.
    again = client.submit("sleep", {"seconds": 0.01}, pool=pool, max_retries=1)
    assert again.wait(timeout=30) is again and again.state == "succeeded"
    assert again.record["params"] == {"seconds": 0.01} and again.record["max_retries"] == 1


def test_submit_many_submits_each_job(client: Client) -> None:
    jobs = client.submit_many(
        [{"workload": "noop", "params": {"value": i}, "pool": pool}
         for i, pool in enumerate(["threads", "prefork", "gevent"])]
    )  # fmt: skip
    assert [job.record["pool"] for job in jobs] == ["threads", "prefork", "gevent"]
    assert [job.result(timeout=30) for job in jobs] == [0, 1, 2]


def test_submit_many_names_the_bad_item_in_the_list_given(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two jobs a request here (1,000 against the API), so that five make three requests.
    monkeypatch.setattr(services.client.client, "BATCH_SIZE", 2)
    jobs = [{"workload": "noop", "params": {"value": i}} for i in range(5)]
    jobs[3] = {"workload": "sleep", "params": {}}
    with pytest.raises(BatchRejected) as refused:
        client.submit_many(jobs)
    # The first request (items 0, 1) was accepted, the second refused whole, the third
    # never sent; the bad item is numbered as in the list given, not in its request.
    error = refused.value
    assert error.status == 422 and [job.record["params"] for job in error.accepted] == [
        {"value": 0}, {"value": 1},
    ]  # fmt: skip
    assert error.fields == ["jobs.3.params.seconds"] and "jobs.3.params" in error.detail
    assert str(error).startswith("jobs 2..3: Validation failed (422)")
    assert str(error).endswith("(2 accepted before)")


def test_jobs_lists_with_a_filter_and_pages(client: Client) -> None:
    mine = [client.submit("noop", value=i, pool="threads") for i in range(5)]
    for job in mine:
        job.wait(timeout=30)
    # Five through pages of two: three requests, newest first, none twice.
    listed = list(client.jobs(workload="noop", pool="threads", limit=5, page_size=2))
    assert [r["id"] for r in listed] == [job.id for job in reversed(mine)]
    assert all(r["workload"] == "noop" and r["pool"] == "threads" for r in listed)
    three = list(client.jobs(workload="noop", pool="threads", limit=3, page_size=2))
    assert [r["id"] for r in three] == [job.id for job in reversed(mine)][:3]
    succeeded = list(client.jobs(state="succeeded", limit=None, page_size=500))
    assert {r["state"] for r in succeeded} == {"succeeded"}
    assert {job.id for job in mine} <= {r["id"] for r in succeeded}


def test_cancel_of_a_queued_job(client: Client, stack: Stack) -> None:
    # prefork has 2 slots: two sleeps fill them, the third job waits in the queue.
    blockers = [client.submit("sleep", seconds=1, pool="prefork") for _ in range(2)]
    stack.wait_for([b.id for b in blockers], states={"running"})
    queued = client.submit("noop", value="never", pool="prefork")
    assert queued.cancel() is queued and queued.state == "cancelled"
    with pytest.raises(JobFailed) as cancelled:
        queued.result(timeout=5)
    assert cancelled.value.error_type == "cancelled" and cancelled.value.job is queued
    for blocker in blockers:
        blocker.wait(timeout=30)
    time.sleep(0.3)  # the worker takes the message it no longer has to run
    assert queued.refresh().state == "cancelled" and queued.record["started_at"] is None
    # A finished job cannot be cancelled: the API's 409, as an ApiError.
    with pytest.raises(ApiError) as finished:
        blockers[0].cancel()
    assert finished.value.status == 409 and finished.value.title == "Already finished"


def test_a_failed_job_raises_job_failed_with_its_error(client: Client) -> None:
    job = client.submit("http_get", url=REFUSED_URL, timeout=2, pool="threads")
    with pytest.raises(JobFailed) as failed:
        job.result(timeout=30)
    assert failed.value.error_type == "ConnectionError"
    assert failed.value.job.state == "failed" and failed.value.message
    assert job.id in str(failed.value) and "ConnectionError" in str(failed.value)


def test_a_422_carries_the_problem_fields(client: Client) -> None:
    with pytest.raises(ApiError) as bad:
        client.submit("sleep", seconds=-1, pool="threads")
    error = bad.value
    assert error.status == 422 and error.title == "Validation failed"
    assert error.type == "urn:jobrunner:problem:validation-failed"
    assert error.fields == ["params.seconds"] and error.errors[0]["message"]
    assert str(error).startswith("Validation failed (422): params.seconds")
    with pytest.raises(ApiError) as unknown:
        client.submit("mine_bitcoin")
    assert unknown.value.fields == ["workload"] and "'sleep'" in unknown.value.detail


def test_a_wrong_key_is_a_401(stack: Stack) -> None:
    with pytest.raises(ApiError) as refused:
        Client(stack.url, api_key="not-a-key").workloads()
    assert refused.value.status == 401 and refused.value.title == "Unauthorized"
    assert "JOBRUNNER_API_KEY" in str(refused.value)
    # A reader may read but not submit: a 403 naming the scope.
    reader = Client(stack.url, api_key=TEST_KEYS["reader"][1])
    assert "sleep" in {w["name"] for w in reader.workloads()}
    with pytest.raises(ApiError) as forbidden:
        reader.submit("noop")
    assert forbidden.value.status == 403 and "submit" in forbidden.value.detail


def test_no_api_is_api_unreachable() -> None:
    with pytest.raises(ApiError) as unreachable:
        Client("http://127.0.0.1:9", api_key="k").pools()
    assert unreachable.value.status is None
    assert "no jobrunner API at http://127.0.0.1:9" in str(unreachable.value)


def test_idempotency_key_gives_the_same_job(client: Client) -> None:
    key = f"client-{uuid.uuid4()}"
    first = client.submit("noop", value="once", idempotency_key=key)
    again = client.submit("noop", value="once", idempotency_key=key)
    assert first.id == again.id
    with pytest.raises(ApiError) as other:
        client.submit("noop", value="different", idempotency_key=key)
    assert other.value.status == 422 and other.value.fields == ["Idempotency-Key"]


def test_wait_times_out_naming_the_job_and_its_state(client: Client) -> None:
    job = client.submit("sleep", seconds=2, pool="threads")
    started = time.monotonic()
    with pytest.raises(TimeoutError) as late:
        job.wait(timeout=0.3)
    assert time.monotonic() - started < 2  # it gave up before the job finished
    assert job.id in str(late.value) and re.search(r"still (queued|running)", str(late.value))
    assert job.wait(timeout=30).state == "succeeded"


@pytest.mark.slow  # an API restart: 15-30 s on a loaded machine
def test_wait_polls_past_an_api_restart(client: Client, stack: Stack) -> None:
    job = client.submit("sleep", seconds=1, pool="threads")
    assert stack.api is not None and stack.api.process is not None
    stack.api.process.send_signal(signal.SIGTERM)
    stack.api.process.wait(timeout=30)
    restarter = threading.Timer(0.5, stack.start_api)
    restarter.start()
    try:
        assert job.wait(timeout=60).state == "succeeded"
    finally:
        restarter.join()
        stack.wait_api_ready(60)


def test_compare_runs_a_small_experiment(client: Client) -> None:
    seen: list[str] = []
    experiment = client.compare(
        "sleep", seconds=0.02, pools=["threads", "gevent"], executors=["threadpool"],
        count=4, concurrency=4, timeout=120, progress=lambda e: seen.append(e["state"]),
    )  # fmt: skip
    assert experiment["state"] == "succeeded" and seen[-1] == "succeeded"
    report = experiment["report"]
    assert {t["target"] for t in report["targets"]} == {"threads", "gevent", "threadpool"}
    assert all(t["errors"] == 0 for t in report["targets"]) and report["verdict"]
    assert client.experiment(experiment["id"])["report"] == report


def test_the_docs_examples_run_as_pasted(stack: Stack, tmp_path: Path) -> None:
    """Every ```python block of docs/client.md, run by a user's Python in a folder of
    theirs, finding the API and key from the environment."""
    page = (ROOT / "docs" / "client.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert blocks
    env = {**os.environ, "JOBRUNNER_URL": stack.url, "JOBRUNNER_API_KEY": TEST_KEYS["admin"][1]}
    for number, block in enumerate(blocks):
        done = subprocess.run(
            [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, f"block {number}:\n{block}\n{done.stderr}"
