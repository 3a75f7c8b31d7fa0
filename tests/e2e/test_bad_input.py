"""Every rejected request answers problem+json and leaves nothing behind in Redis."""

from __future__ import annotations

import pytest

from services.catalog.pools import POOLS
from tests.stack import Stack


def stored_jobs(stack: Stack) -> tuple[int, dict[str, int]]:
    client = stack.redis()
    records = sum(1 for _ in client.scan_iter("jobrunner:job:*", count=1000))
    queues = {p.queue: client.llen(p.queue) for p in POOLS.values()}
    return records, queues


CASES = [
    pytest.param(b"{not json", 400, None, id="malformed-json"),
    pytest.param(b'["a list"]', 422, None, id="not-an-object"),
    pytest.param(b'{"workload": "mine_bitcoin"}', 422, "workload", id="unknown-workload"),
    pytest.param(
        b'{"workload": "sleep", "params": {"seconds": 1}, "pool": "fibers"}',
        422,
        "pool",
        id="unknown-pool",
    ),
    pytest.param(
        b'{"workload": "sleep", "params": {"seconds": 3600}}',
        422,
        "params.seconds",
        id="out-of-bounds",
    ),
    pytest.param(b'{"workload": "sleep", "params": {}}', 422, "params.seconds", id="missing"),
    pytest.param(
        b'{"workload": "cpu_hash", "params": {"rounds": 5, "extra": 1}}',
        422,
        "params.extra",
        id="unknown-param",
    ),
    pytest.param(
        b'{"workload": "http_get", "params": {"url": "http://169.254.169.254/"}}',
        422,
        None,
        id="host-not-allowed",
    ),
    pytest.param(
        b'{"workload": "noop", "params": {"value": "' + b"x" * 70_000 + b'"}}',
        413,
        None,
        id="too-large",
    ),
]


@pytest.mark.parametrize(("body", "status", "field"), CASES)
def test_rejected_submission_is_a_problem_and_queues_nothing(
    stack: Stack, body: bytes, status: int, field: str | None
) -> None:
    before = stored_jobs(stack)
    response = stack.http.post(
        f"{stack.url}/jobs", data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert {"type", "title", "detail"} <= set(problem)
    assert "Traceback" not in response.text
    if field:
        assert field in {e["field"] for e in problem["errors"]}, problem
    assert stored_jobs(stack) == before


@pytest.mark.parametrize("body", [{"workload": "nope"}, {}, {"params": {"seconds": 1}}])
def test_unknown_or_missing_workload_names_the_allowed_values(stack: Stack, body: dict) -> None:
    response = stack.http.post(f"{stack.url}/jobs", json=body, timeout=10)
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "workload"
    for name in ("noop", "sleep", "http_get", "cpu_hash", "cpu_primes"):
        assert name in error["message"]


def test_unknown_job_is_404_problem(stack: Stack) -> None:
    for method in ("get", "delete"):
        response = stack.http.request(method, f"{stack.url}/jobs/no-such-job", timeout=10)
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "query", [{"limit": 0}, {"limit": 10_000}, {"state": "sleeping"}, {"pool": "x"}]
)
def test_bad_listing_query_is_422(stack: Stack, query: dict) -> None:
    response = stack.http.get(f"{stack.url}/jobs", params=query, timeout=10)
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"


def test_wrong_method_and_path_are_problems(stack: Stack) -> None:
    assert stack.http.put(f"{stack.url}/jobs", timeout=10).status_code == 405
    missing = stack.http.get(f"{stack.url}/nowhere", timeout=10)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"workload": "sleep", "params": {"seconds": 1}, "pool": "fibers"}, "pool",
         ["threads", "prefork", "gevent"]),
        ({"workload": "sleep", "params": {"seconds": 3600}}, "params.seconds", ["60"]),
        ({"workload": "cpu_hash", "params": {"rounds": 0}}, "params.rounds", ["1"]),
    ],
)  # fmt: skip
def test_a_422_names_the_allowed_values_or_the_bound(
    stack: Stack, body: dict, field: str, says: list[str]
) -> None:
    response = stack.http.post(f"{stack.url}/jobs", json=body, timeout=10)
    assert response.status_code == 422
    (error,) = [e for e in response.json()["errors"] if e["field"] == field]
    assert all(word in error["message"] for word in says), error
