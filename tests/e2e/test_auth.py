"""API keys and scopes on every endpoint of the OpenAPI document, and the rate limit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import requests
import requests.adapters

from api.routes.delay import LAB_DELAY_SLOTS, LAB_DELAY_SLOTS_PER_CLIENT
from services.core import redis_keys
from services.core.redis_clients import redis_client
from services.devstack.redis_server import free_port
from tests.stack import Stack, bearer

T = TypeVar("T")
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
def limited_apis(stack: Stack) -> Iterator[list[str]]:
    """Two more API processes on the same Redis, one gunicorn worker each, limited to 3
    requests per second per key: two processes a test can address in turn (two workers
    of one gunicorn share a socket, and the kernel picks which takes a connection)."""
    ports: set[int] = set()
    while len(ports) < 2:
        ports.add(free_port())
    limited = {"API_RATE_LIMIT": "3", "API_WORKERS": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "api"],
            env={**stack.env, **limited, "API_PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in sorted(ports)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in sorted(ports)]
    try:
        deadline = time.monotonic() + 30
        for url in urls:
            while True:
                try:
                    if requests.get(f"{url}/healthz", timeout=1).ok:
                        break
                except requests.RequestException:
                    assert time.monotonic() < deadline, "a limited API did not start"
                    time.sleep(0.1)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)


def in_one_second(what: str, burst: Callable[[], T]) -> T:
    """`burst()`'s answer, sent from the start of a second so that it falls in one
    counting window of the rate limit; skipped if three tries all spill into the next."""
    for _ in range(3):
        time.sleep(1 - time.time() % 1)
        window = int(time.time())
        answer = burst()
        if int(time.time()) == window:
            return answer
    pytest.skip(f"no burst of {what} fitted in one second on this machine")


def test_rate_limit_per_key_answers_429_with_retry_after(limited_apis: list[str]) -> None:
    """At most 3 requests a second per key, counted in Redis: requests sent to two API
    processes in turn share one count (counted in each process, 6 would pass)."""
    answers = in_one_second("8 requests", lambda: [
        requests.get(f"{limited_apis[i % 2]}/workloads", headers=bearer("reader"), timeout=10)
        for i in range(8)
    ])  # fmt: skip
    codes = [a.status_code for a in answers]
    assert codes.count(200) >= 1 and 429 in codes, codes
    assert codes.count(200) <= 3, codes  # one count for both processes
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["Content-Type"] == "application/problem+json"
    # Another key has its own budget.
    other = requests.get(f"{limited_apis[0]}/workloads", headers=bearer("submitter"), timeout=10)
    assert other.status_code == 200


def test_a_submission_is_counted_in_the_script_that_stores_it(
    stack: Stack, limited_apis: list[str]
) -> None:
    """One round trip to Redis a submission, not two: its count against the key's limit
    is made inside create.lua (MONITOR names a script's commands' client "lua"); one past
    the limit is refused there with nothing stored, and the key's next submissions that
    second are refused before any work (an invalid one gets its 429, not a 422)."""
    assert stack.redis_url is not None
    client = redis_client(stack.redis_url, timeout=10, settings=stack.settings())
    one = {"workload": "noop", "params": {"value": 1}, "pool": "threads"}
    with client.monitor() as monitor:
        answer = requests.post(
            f"{limited_apis[0]}/jobs", json=one, headers=bearer("submitter"), timeout=10
        )
        assert answer.status_code == 202, answer.text
        job_id, seen = answer.json()["id"], []
        while True:  # up to the script's push of this job's message
            command = monitor.next_command()
            name = command["command"].split(" ", 1)[0]
            if name in ("INCR", "INCRBY") and ":rate:" in command["command"]:
                seen.append(command)  # redis-py's incr sends INCRBY
            if name == "LPUSH" and command["client_type"] == "lua" and job_id in command["command"]:
                break
    assert [c["client_type"] for c in seen] == ["lua"], seen
    assert ":rate:submitter:" in seen[0]["command"], seen

    # Single jobs and batches of two, to the two API processes in turn.
    sent = [{"jobs": [one, one]} if i % 3 == 1 else one for i in range(6)]

    def burst() -> tuple[int, list[requests.Response], requests.Response]:
        before = client.zcard(redis_keys.job_index())
        answers = [
            requests.post(f"{limited_apis[i % 2]}/jobs{'/batch' if 'jobs' in body else ''}",
                          json=body, headers=bearer("submitter"), timeout=10)
            for i, body in enumerate(sent)
        ]  # fmt: skip
        invalid = requests.post(
            f"{limited_apis[0]}/jobs", json={"workload": "nope"}, headers=bearer("submitter"),
            timeout=10,
        )  # fmt: skip
        return before, answers, invalid

    before, answers, invalid = in_one_second("7 submissions", burst)
    codes = [a.status_code for a in answers]
    assert codes == [202] * 3 + [429] * 3, codes  # one count for both APIs
    stored = sum(len(body.get("jobs", [body])) for body in sent[:3])
    assert client.zcard(redis_keys.job_index()) - before == stored, "a refusal stored a job"
    refused = answers[-1]
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert invalid.status_code == 429, invalid.text  # refused before it was validated
    client.close()


def test_a_submission_that_stores_nothing_still_counts(limited_apis: list[str]) -> None:
    """Counted in its write, a submission refused before it (a 422) is counted after:
    invalid requests are held to the limit too."""

    def burst() -> tuple[list[requests.Response], requests.Response]:
        bad = [
            requests.post(f"{limited_apis[0]}/jobs", json={"workload": "nope"},
                          headers=bearer("submitter"), timeout=10)
            for _ in range(3)
        ]  # fmt: skip
        good = requests.post(
            f"{limited_apis[1]}/jobs", json={"workload": "noop"}, headers=bearer("submitter"),
            timeout=10,
        )  # fmt: skip
        return bad, good

    bad, good = in_one_second("4 submissions", burst)
    assert [a.status_code for a in bad] == [422] * 3
    assert good.status_code == 429, good.text


def test_auth_off_is_explicit_and_warned(stack: Stack) -> None:
    """JOBRUNNER_AUTH=off opens every endpoint to a request without a key, and says so
    at start; the stack's own API (auth on) still wants one."""
    env = {**stack.env, "JOBRUNNER_AUTH": "off"}
    code = (
        "from api.app import create_app\n"
        "client = create_app().test_client()\n"
        "print(client.get('/workloads').status_code, client.get('/jobs').status_code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "200"], result.stderr[-2000:]
    assert "JOBRUNNER_AUTH=off" in result.stderr
    assert os.environ.get("JOBRUNNER_AUTH") != "off"
    assert requests.get(f"{stack.url}/workloads", timeout=10).status_code == 401


def delay_from(address: str, url: str, ms: int) -> requests.Response:
    """GET /lab/delay from a source address of our own: 127.0.0.0/8 is all loopback,
    so each address is another client to the API."""
    with requests.Session() as session:
        session.mount("http://", SourceAddressAdapter(address))
        return session.get(f"{url}/lab/delay?ms={ms}", timeout=30)


class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def test_lab_delay_cannot_take_every_api_thread(stack: Stack) -> None:
    """/lab/delay stays public (workers' http_get jobs call it without a key), so what
    protects the API is a cap on the delays each process holds at once, per client and
    in all. One client asks for 20 3-s delays at once: it is refused (429) past its share
    of each process. Then four other clients ask for 8 each, more than the slots left:
    they are refused (503) past each process's total. The API answers meanwhile."""
    processes = stack.settings().api_workers
    greedy, crowd = "127.0.0.1", [f"127.0.0.{n}" for n in range(2, 6)]
    finished: list[tuple[str, float, requests.Response]] = []

    def call_delay(address: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        answer = delay_from(address, stack.url, 3000)
        finished.append((address, time.monotonic(), answer))

    with ThreadPoolExecutor(max_workers=20 + len(crowd) * LAB_DELAY_SLOTS_PER_CLIENT) as pool:
        for wave in ([greedy] * 20, crowd * LAB_DELAY_SLOTS_PER_CLIENT):
            barrier = threading.Barrier(len(wave) + 1)
            for address in wave:
                pool.submit(call_delay, address, barrier)
            barrier.wait()
            time.sleep(0.5)  # the wave's delays have arrived
        health = requests.get(f"{stack.url}/healthz", timeout=30)
        health_answered = time.monotonic()
    assert health.status_code == 200
    assert len(finished) == 20 + len(crowd) * LAB_DELAY_SLOTS_PER_CLIENT
    waited = [at for _, at, answer in finished if answer.status_code == 200]
    codes_of = {a: [r.status_code for c, _, r in finished if c == a] for a in [greedy, *crowd]}
    assert set().union(*codes_of.values()) <= {200, 429, 503}, codes_of
    # Per client: the greedy one is refused past its share of each process.
    assert 429 in codes_of[greedy], codes_of
    assert codes_of[greedy].count(200) <= LAB_DELAY_SLOTS_PER_CLIENT * processes, codes_of
    # In all: no process holds more than its slots, however many clients ask.
    assert len(waited) <= LAB_DELAY_SLOTS * processes, codes_of
    assert any(503 in codes_of[address] for address in crowd), codes_of
    assert health_answered < min(waited)  # not queued behind a delay
    refused = next(r for _, _, r in finished if r.status_code != 200)
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["Content-Type"] == "application/problem+json"


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
