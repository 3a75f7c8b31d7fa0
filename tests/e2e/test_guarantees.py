"""Idempotent submission, retries with backoff, and time limits where a pool can kill."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from services.broker.celery_app import make_celery
from services.core import redis_keys
from services.core.ids import new_uuid4
from services.core.settings import Settings
from services.core.vocabulary import JobState
from services.jobs.idempotency import fingerprint
from services.jobs.reconcile import requeue_lost_jobs
from services.jobs.record import JobRecord
from services.jobs.store import JobStore
from services.jobs.submission import JobSpec, submit_job
from tests.stack import Stack, bearer

REFUSED_URL = "http://127.0.0.1:9/"  # nothing listens on the discard port: connection refused


def post_job(stack: Stack, body: dict, key: str | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    return stack.http.post(f"{stack.url}/jobs", json=body, headers=headers, timeout=10)


def test_idempotency_key_returns_the_same_job(stack: Stack) -> None:
    body = {"workload": "noop", "params": {"value": "once"}}
    first = post_job(stack, body, "order-42")
    again = post_job(stack, body, "order-42")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    other = post_job(stack, {**body, "params": {"value": "different"}}, "order-42")
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"


def test_concurrent_requests_with_one_key_make_one_job(stack: Stack) -> None:
    # A value no other test of the shared stack submits: the jobs it made are countable.
    marker = f"burst-{uuid.uuid4()}"
    body = {"workload": "noop", "params": {"value": marker}}
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: post_job(stack, body, marker), range(10)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    listed = stack.http.get(
        f"{stack.url}/jobs", params={"workload": "noop", "limit": 500}, timeout=10
    ).json()["jobs"]
    assert sum(1 for j in listed if j["params"] == {"value": marker}) == 1


def test_an_idempotency_key_belongs_to_its_api_key(stack: Stack) -> None:
    """Two API keys sending the same Idempotency-Key get a job each: one key's request is
    never replayed to the other, nor its different body refused as a reuse (422)."""
    key = f"per-key-{uuid.uuid4()}"

    def post_as(name: str, value: str) -> requests.Response:
        body = {"workload": "noop", "params": {"value": value}}
        headers = {**bearer(name), "Idempotency-Key": key}
        return requests.post(f"{stack.url}/jobs", json=body, headers=headers, timeout=10)

    admins = post_as("admin", "the admin's")
    submitters = post_as("submitter", "the submitter's")
    assert admins.status_code == submitters.status_code == 202, submitters.text
    assert "Idempotent-Replayed" not in submitters.headers
    assert submitters.json()["id"] != admins.json()["id"]
    assert submitters.json()["params"] == {"value": "the submitter's"}
    # Each key's own repeat is still a replay of its own job.
    again = post_as("submitter", "the submitter's")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == submitters.json()["id"]


def test_a_claim_left_without_its_job_does_not_block_its_key(stack: Stack) -> None:
    """What an API process dying between claiming a key and creating its job left, when
    the claim came first: the key must not answer 503 for as long as the claim lives."""
    body = {"workload": "noop", "params": {"value": "orphaned"}}
    spec = JobSpec(workload="noop", params={"value": "orphaned"})
    claim_key = redis_keys.idempotency("admin", hashlib.sha256(b"orphaned-1").hexdigest())
    claim = {"job_id": str(uuid.uuid4()), "request": fingerprint(spec)}
    stack.redis().set(claim_key, json.dumps(claim), ex=86_400)

    first = post_job(stack, body, "orphaned-1")
    assert first.status_code == 202, first.text
    again = post_job(stack, body, "orphaned-1")
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert stack.wait_for([first.json()["id"]])[0]["state"] == "succeeded"


def test_retryable_failure_is_retried_then_failed_with_every_error(stack: Stack) -> None:
    body = {
        "workload": "http_get",
        "params": {"url": REFUSED_URL, "timeout": 2},
        "pool": "threads",
        "max_retries": 2,
        "backoff": 0.1,
    }
    record = post_job(stack, body).json()
    (done,) = stack.wait_for([record["id"]], timeout=60)
    assert done["state"] == "failed"
    assert done["attempts"] == 3
    assert [e["type"] for e in done["attempt_errors"]] == ["ConnectionError"] * 3
    assert done["error"]["type"] == "ConnectionError"
    # The worker keeps serving.
    ok = stack.submit("noop", {"value": 1}, pool="threads")
    assert stack.wait_for([ok["id"]])[0]["state"] == "succeeded"

    # POST /jobs/<id>/retry queues it again, under the same id.
    retried = stack.http.post(f"{stack.url}/jobs/{record['id']}/retry", timeout=10)
    assert retried.status_code == 202, retried.text
    assert retried.json()["state"] == "queued"
    (again,) = stack.wait_for([record["id"]], timeout=60)
    assert again["state"] == "failed" and again["attempts"] > 3


def test_a_failure_the_workload_does_not_mark_retryable_fails_at_once(stack: Stack) -> None:
    """Bad input fails at once, whatever max_retries says: only the failures a workload
    marks retryable (http_get's connection errors and timeouts) are retried. Input the
    API would refuse (422) still reaches a worker when sent by other means, as here
    through submit_job: the workload's own validation fails it there."""
    settings = stack.settings()
    store = JobStore(stack.redis(), settings.job_result_ttl)
    spec = JobSpec("cpu_primes", {"below": "ten"}, pool="threads", max_retries=3, backoff=0.1)
    job_id = submit_job(store, make_celery(settings), spec).id
    (done,) = stack.wait_for([job_id], timeout=60)
    assert done["state"] == "failed", done
    assert done["error"]["type"] == "ValidationError", done["error"]
    assert done["attempts"] == 1 and len(done["attempt_errors"]) == 1, done


def test_retry_of_a_job_neither_failed_nor_cancelled_is_409(stack: Stack) -> None:
    """POST /jobs/<id>/retry queues only a failed or cancelled job: a succeeded one would
    run twice, a running one beside itself, a queued one with a second message."""
    finished = stack.submit("noop", {"value": 1})
    stack.wait_for([finished["id"]])
    running = stack.submit("sleep", {"seconds": 1}, pool="threads")
    stack.wait_for([running["id"]], states={"running"})
    # A queued job that no worker will take meanwhile: its record alone, no message.
    queued = JobRecord(
        id=new_uuid4(), workload="noop", params={}, pool="threads", pool_chosen_by="client",
        state=JobState.queued, submitted_at=time.time(),
    )  # fmt: skip
    JobStore(stack.redis(), 3600).create(queued)

    for job_id, state in ((finished["id"], "succeeded"), (running["id"], "running"),
                          (queued.id, "queued")):  # fmt: skip
        answer = stack.http.post(f"{stack.url}/jobs/{job_id}/retry", timeout=10)
        assert answer.status_code == 409, (state, answer.text)
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert stack.job(job_id)["state"] == state
    assert stack.wait_for([running["id"]])[0]["attempts"] == 1
    assert stack.http.delete(f"{stack.url}/jobs/{queued.id}", timeout=10).ok


def test_time_limit_kills_a_prefork_job(stack: Stack) -> None:
    body = {"workload": "sleep", "params": {"seconds": 20}, "pool": "prefork", "time_limit": 1}
    record = post_job(stack, body).json()
    (done,) = stack.wait_for([record["id"]], timeout=30)
    assert done["state"] == "failed"
    assert done["error"]["type"] == "time_limit"
    after = stack.submit("noop", {"value": "alive"}, pool="prefork")
    assert stack.wait_for([after["id"]], timeout=30)[0]["state"] == "succeeded"


def test_time_limit_on_a_pool_that_cannot_kill_is_422_naming_the_able_pools(
    stack: Stack,
) -> None:
    for pool in ("threads", "gevent"):
        body = {"workload": "sleep", "params": {"seconds": 1}, "pool": pool, "time_limit": 5}
        answer = post_job(stack, body)
        assert answer.status_code == 422
        assert answer.json()["errors"][0]["field"] == "time_limit"
        assert "prefork" in answer.json()["detail"]


def test_time_limit_longer_than_the_visibility_timeout_allows_is_422(stack: Stack) -> None:
    body = {"workload": "sleep", "params": {"seconds": 1}, "pool": "prefork", "time_limit": 3600}
    answer = post_job(stack, body)
    assert answer.status_code == 422
    assert "JOB_VISIBILITY_TIMEOUT" in answer.json()["detail"]


def test_time_limit_without_a_pool_picks_one_that_can_enforce_it(stack: Stack) -> None:
    record = post_job(stack, {"workload": "sleep", "params": {"seconds": 0}, "time_limit": 5})
    assert record.status_code == 202
    assert record.json()["pool"] == "prefork"


def test_time_limit_kills_a_retried_prefork_job(stack: Stack) -> None:
    """A retry runs under a Celery task id of its own; the kill is still recorded on the
    job, which the worker finds from the task's argument."""
    body = {"workload": "sleep", "params": {"seconds": 20}, "pool": "prefork", "time_limit": 1}
    record = post_job(stack, body).json()
    (first,) = stack.wait_for([record["id"]], timeout=30)
    assert first["error"]["type"] == "time_limit"
    retried = stack.http.post(f"{stack.url}/jobs/{record['id']}/retry", timeout=10)
    assert retried.status_code == 202, retried.text
    (done,) = stack.wait_for([record["id"]], timeout=30)
    assert done["state"] == "failed" and done["attempts"] == 2
    assert done["error"]["type"] == "time_limit"


def test_a_backoff_that_would_outlive_the_visibility_timeout_is_422(stack: Stack) -> None:
    """backoff * 2**(max_retries - 1), the longest wait before a retry, must stay below
    the visibility timeout (3600 s here): a message held longer is delivered again."""
    body = {"workload": "noop", "params": {}, "max_retries": 10, "backoff": 300}
    answer = post_job(stack, body)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "backoff"
    assert "JOB_VISIBILITY_TIMEOUT" in answer.json()["detail"]
    batch = stack.http.post(f"{stack.url}/jobs/batch", json={"jobs": [body]}, timeout=10)
    assert batch.status_code == 422
    assert batch.json()["errors"][0]["field"] == "jobs.0.backoff"
    # The same backoff with fewer retries fits: 300 * 2**3 = 2400 s.
    assert post_job(stack, {**body, "max_retries": 4}).status_code == 202


def test_a_retry_refreshes_the_records_ttl(stack: Stack) -> None:
    """The record must outlive the retry it waits for: queueing a retry starts its TTL
    again. The first attempt times out after 3 s, so a record not refreshed would expire
    about 3 s earlier than one refreshed when its retry was queued."""
    ttl = 86_400  # JOB_RESULT_TTL's default, which the test stack keeps
    body = {
        "workload": "http_get",
        "params": {"url": f"{stack.url}/lab/delay?ms=5000", "timeout": 3},
        "pool": "threads",
        "max_retries": 1,
        "backoff": 0.1,
    }
    record = post_job(stack, body).json()
    (done,) = stack.wait_for([record["id"]], timeout=60)
    assert done["state"] == "failed" and done["attempts"] == 2, done
    expires_at = time.time() + stack.redis().pttl(redis_keys.job(record["id"])) / 1000
    # Later than a record never refreshed by most of the first attempt's own timeout.
    first_attempt = body["params"]["timeout"]
    assert expires_at - (done["submitted_at"] + ttl) > 2 / 3 * first_attempt


def test_a_retry_waits_out_its_backoff_and_is_not_sent_again_meanwhile(stack: Stack) -> None:
    """A retryable failure's retry is due a jittered backoff later: the record says when
    (`dispatched_at`, on Redis's clock), and the worker holds the message until then.
    The second attempt must not start before it is due, whatever the jitter drew; and
    while the job waits, `queued` with its message held, the reconciler must not take it
    for a lost one and send it again."""
    body = {
        "workload": "http_get",
        "params": {"url": REFUSED_URL, "timeout": 2},
        "pool": "threads",
        "max_retries": 1,
        "backoff": 300,  # a countdown of up to 300 s, with full jitter
    }
    record = post_job(stack, body).json()
    job_key = redis_keys.job(record["id"])
    deadline = time.monotonic() + 30
    while not stack.job(record["id"])["attempt_errors"]:
        assert time.monotonic() < deadline, "the first attempt never failed"
        time.sleep(0.05)
    due = float(stack.redis().hget(job_key, "dispatched_at"))

    store = JobStore(stack.redis(), 86_400)
    resent = requeue_lost_jobs(store, make_celery(Settings(redis_url=stack.redis_server.url)), 0)
    assert record["id"] not in resent
    # Watched for a second (or until it is due, if the jitter drew less than that).
    time.sleep(min(1.0, max(0.0, due - time.time()) + 0.2))
    seen = stack.job(record["id"])
    if seen["attempts"] == 2:
        # (Within a clock tick: Redis's clock and the worker's are this machine's.)
        early = due - seen["started_at"]
        assert early < 0.05, f"the retry ran {early:.2f} s before it was due"
    else:
        assert seen["state"] == "queued" and seen["attempts"] == 1, seen
        assert stack.redis().llen("pool.threads") == 0  # no second message either
    stack.http.delete(f"{stack.url}/jobs/{record['id']}", timeout=10)  # stop waiting for it
