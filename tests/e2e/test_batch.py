"""POST /jobs/batch: all or nothing, the bad item named, a thousand jobs accepted."""

from __future__ import annotations

from tests.e2e.test_bad_input import stored_jobs
from tests.stack import Stack


def post_batch(stack: Stack, jobs: list):
    return stack.http.post(f"{stack.url}/jobs/batch", json={"jobs": jobs}, timeout=60)


def test_a_thousand_jobs_are_accepted_and_all_run(stack: Stack) -> None:
    jobs = [
        {"workload": "noop", "params": {"value": i}, "pool": ("threads", "gevent")[i % 2]}
        for i in range(1_000)
    ]
    answer = post_batch(stack, jobs)
    assert answer.status_code == 202, answer.text
    records = answer.json()["jobs"]
    assert len(records) == 1_000 and len({r["id"] for r in records}) == 1_000
    assert [r["params"]["value"] for r in records] == list(range(1_000))
    done = stack.wait_for([r["id"] for r in records], timeout=120)
    assert all(r["state"] == "succeeded" for r in done)
    assert [r["result"] for r in done] == list(range(1_000))


def test_one_bad_item_rejects_the_whole_batch_and_is_named(stack: Stack) -> None:
    before = stored_jobs(stack)
    jobs = [{"workload": "sleep", "params": {"seconds": 0.01}} for _ in range(5)]
    jobs[3] = {"workload": "sleep", "params": {"seconds": 600}}
    answer = post_batch(stack, jobs)
    assert answer.status_code == 422
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert [e["field"] for e in answer.json()["errors"]] == ["jobs.3.params.seconds"]
    assert "nothing was accepted" in answer.json()["detail"]
    assert stored_jobs(stack) == before


def test_batch_limits(stack: Stack) -> None:
    too_many = post_batch(stack, [{"workload": "noop"}] * 1_001)
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["field"] == "jobs"
    assert post_batch(stack, []).status_code == 422
    not_a_list = stack.http.post(f"{stack.url}/jobs/batch", json={"jobs": "x"}, timeout=10)
    assert not_a_list.status_code == 422
    # The server answers 413 without reading the body and drops the connection: keep it
    # out of the session's pool, or the next test's request meets a closed socket.
    huge = stack.http.post(
        f"{stack.url}/jobs/batch",
        data=b'{"jobs": ["' + b"x" * 1_100_000 + b'"]}',
        headers={"Connection": "close"},
        timeout=30,
    )
    assert huge.status_code == 413
