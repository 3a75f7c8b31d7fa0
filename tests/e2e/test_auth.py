"""API keys and scopes on every endpoint of the OpenAPI document, and the rate limit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from api.routes.delay import LAB_DELAY_SLOTS_PER_CLIENT
from services.devstack.redis_server import free_port
from tests.stack import Stack, bearer

PUBLIC_PATHS = {"/healthz", "/readyz", "/openapi.json", "/lab/delay"}


def protected_operations(stack: Stack) -> list[tuple[str, str]]:
    document = requests.get(f"{stack.url}/openapi.json", timeout=10).json()
    operations = []
    for path, methods in document["paths"].items():
        if path in PUBLIC_PATHS or path.startswith("/apidoc"):
            continue
        concrete = re.sub(r"\{[^}]+\}", "no-such-id", path)
        operations.extend((method.upper(), concrete) for method in methods)
    return operations


def test_openapi_and_probes_are_public(stack: Stack) -> None:
    for path in PUBLIC_PATHS - {"/lab/delay"}:
        assert requests.get(f"{stack.url}{path}", timeout=10).status_code == 200, path


def test_every_protected_endpoint_wants_a_key(stack: Stack) -> None:
    operations = protected_operations(stack)
    assert ("POST", "/jobs") in operations and ("DELETE", "/jobs/no-such-id") in operations
    for method, path in operations:
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic x"}):
            response = requests.request(method, f"{stack.url}{path}", headers=headers, timeout=10)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["Content-Type"] == "application/problem+json"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_scopes_are_enforced_on_every_endpoint(stack: Stack) -> None:
    for method, path in protected_operations(stack):
        reader = requests.request(
            method, f"{stack.url}{path}", headers=bearer("reader"), timeout=10
        )
        if method == "GET":
            assert reader.status_code not in (401, 403), (method, path)
        else:
            assert reader.status_code == 403, (method, path)
            assert "scope" in reader.json()["detail"]


def test_submit_scope_cannot_cancel(stack: Stack) -> None:
    record = requests.post(
        f"{stack.url}/jobs", json={"workload": "noop"}, headers=bearer("submitter"), timeout=10
    )
    assert record.status_code == 202
    job_url = f"{stack.url}/jobs/{record.json()['id']}"
    assert requests.delete(job_url, headers=bearer("submitter"), timeout=10).status_code == 403
    assert requests.get(job_url, headers=bearer("reader"), timeout=10).status_code == 200


def test_submit_scope_cannot_run_experiments(stack: Stack) -> None:
    body = {"workload": "noop", "params": {}, "count": 1, "pools": ["threads"], "local": []}
    answer = requests.post(
        f"{stack.url}/experiments", json=body, headers=bearer("submitter"), timeout=10
    )
    assert answer.status_code == 403 and "admin" in answer.json()["detail"]


def test_without_configured_keys_nobody_gets_in(stack: Stack) -> None:
    """Auth on and no JOBRUNNER_API_KEYS: every protected call is 401, the start warns."""
    env = {**stack.env, "JOBRUNNER_API_KEYS": ""}
    code = (
        "from api.app import create_app\n"
        "client = create_app().test_client()\n"
        "print(client.get('/jobs').status_code, client.post('/jobs', json={}).status_code,"
        " client.get('/healthz').status_code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["401", "401", "200"]
    assert "no JOBRUNNER_API_KEYS configured" in result.stderr


@pytest.fixture(scope="module")
def limited_api(stack: Stack) -> Iterator[str]:
    """A second API process on the same Redis, limited to 3 requests per second per key."""
    port = free_port()
    env = {**stack.env, "API_PORT": str(port), "API_RATE_LIMIT": "3", "API_WORKERS": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "api"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, "limited API did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_rate_limit_per_key_answers_429_with_retry_after(limited_api: str) -> None:
    # Aligned to the start of a second, so the burst falls in one counting window.
    time.sleep(1 - time.time() % 1)
    with requests.Session() as session:
        answers = [
            session.get(f"{limited_api}/workloads", headers=bearer("reader"), timeout=10)
            for _ in range(8)
        ]
    codes = [a.status_code for a in answers]
    assert codes.count(200) >= 1 and 429 in codes, codes
    assert codes.count(200) <= 3, codes  # the count is shared by both gunicorn workers
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["Content-Type"] == "application/problem+json"
    # Another key has its own budget.
    other = requests.get(f"{limited_api}/workloads", headers=bearer("submitter"), timeout=10)
    assert other.status_code == 200


def test_auth_off_is_explicit_and_warned(stack: Stack) -> None:
    env = {**stack.env, "JOBRUNNER_AUTH": "off"}
    code = "from api.app import create_app; create_app()"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "JOBRUNNER_AUTH=off" in result.stderr
    assert os.environ.get("JOBRUNNER_AUTH") != "off"


def test_lab_delay_cannot_take_every_api_thread(stack: Stack) -> None:
    """/lab/delay stays public (workers' http_get jobs call it without a key), so what
    protects the API is a cap on the delays each process holds at once: 80 concurrent
    3 s delays, more than the API's 64 threads, are mostly refused at once, and the API
    keeps answering meanwhile."""
    delay_url = f"{stack.url}/lab/delay?ms=3000"
    started = threading.Barrier(81)
    finished: list[tuple[float, requests.Response]] = []

    def call_delay() -> None:
        started.wait()
        answer = requests.get(delay_url, timeout=30)
        finished.append((time.monotonic(), answer))

    with ThreadPoolExecutor(max_workers=80) as pool:
        for _ in range(80):
            pool.submit(call_delay)
        started.wait()
        time.sleep(0.5)  # the delays have arrived
        health = requests.get(f"{stack.url}/healthz", timeout=30)
        health_answered = time.monotonic()
    assert health.status_code == 200
    waited = [at for at, answer in finished if answer.status_code == 200]
    refused = [answer for _, answer in finished if answer.status_code == 429]
    assert refused, "every delay was let in"
    assert len(waited) <= LAB_DELAY_SLOTS_PER_CLIENT * 2  # the test stack's 2 API processes
    assert health_answered < min(waited)  # not queued behind a delay
    assert refused[0].headers["Retry-After"] == "1"
    assert refused[0].headers["Content-Type"] == "application/problem+json"


def test_duplicate_key_names_are_refused_at_start(stack: Stack) -> None:
    """Two keys under one name would share a rate limit, Idempotency-Keys and a log
    name; the API refuses to start, naming the duplicate."""
    keys = f"ci:read:{'ab' * 32},ops:read+admin:{'cd' * 32},ci:read+submit:{'ef' * 32}"
    env = {**stack.env, "JOBRUNNER_API_KEYS": keys}
    code = "from api.app import create_app; create_app()"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "duplicate" in result.stderr and "'ci'" in result.stderr, result.stderr[-2000:]
