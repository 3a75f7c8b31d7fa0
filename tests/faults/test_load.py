"""Under load, every 202 is honoured: while a worker is killed and restarted, and while
the API itself restarts. Each test prints accepted / finished / lost / duplicated."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.stack import Stack, bearer

CLIENTS = 50


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("load"),
        env_overrides={
            "JOB_VISIBILITY_TIMEOUT": "3",
            "JOB_MAX_TIME_LIMIT": "2",
            "API_RATE_LIMIT": "0",
            "API_WORKERS": "2",
        },
    )
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker("threads", 16)
        stack.start_worker("threads", 16)
        stack.start_worker("gevent", 100)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def hammer(stack: Stack, bodies: list[dict], during: Callable[[], None]) -> list[str]:
    """POST every body from CLIENTS concurrent clients while `during` runs; the ids of
    the jobs that were accepted (202). Connection errors are refusals, not acceptances."""
    accepted: list[str] = []
    lock = threading.Lock()

    def client(chunk: list[dict]) -> None:
        with requests.Session() as session:
            session.headers.update(bearer("admin"))
            for body in chunk:
                try:
                    answer = session.post(f"{stack.url}/jobs", json=body, timeout=30)
                except requests.RequestException:
                    continue
                if answer.status_code == 202:
                    with lock:
                        accepted.append(answer.json()["id"])

    chunks = [bodies[i::CLIENTS] for i in range(CLIENTS)]
    with ThreadPoolExecutor(max_workers=CLIENTS + 1) as pool:
        futures = [pool.submit(client, chunk) for chunk in chunks]
        pool.submit(during).result()
        for future in futures:
            future.result()
    return accepted


def settle(stack: Stack, accepted: list[str], timeout: float = 240) -> dict[str, dict]:
    """Wait until every accepted job is final (or the time is up); their records."""
    client = stack.redis()
    deadline = time.monotonic() + timeout
    pending = set(accepted)
    records: dict[str, dict] = {}
    while pending and time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        ordered = list(pending)
        for job_id in ordered:
            pipe.hgetall(f"jobrunner:job:{job_id}")
        for job_id, raw in zip(ordered, pipe.execute(), strict=True):
            if raw.get("state") in ("succeeded", "failed", "cancelled"):
                records[job_id] = raw
                pending.discard(job_id)
        time.sleep(0.5)
    return records


def executions_per_tag(stack: Stack) -> Counter[str]:
    """How often each http_get job really ran: the API's access log saw each request."""
    log = (stack.workdir / "api.log").read_text()
    return Counter(re.findall(r"GET /lab/delay\?ms=0&tag=([\w-]+) ", log))


def bodies_for(count: int, stack: Stack, prefix: str, traced: bool = True) -> list[dict]:
    bodies = []
    for i in range(count):
        if traced and i % 20 == 0:  # every 20th job leaves a trace per execution in the access log
            url = f"{stack.url}/lab/delay?ms=0&tag={prefix}-{i}"
            bodies.append({"workload": "http_get", "params": {"url": url}, "pool": "threads"})
        else:
            pool = "gevent" if i % 2 else "threads"
            bodies.append({"workload": "noop", "params": {"value": i}, "pool": pool})
    return bodies


def attempts_per_tag(records: dict[str, dict]) -> dict[str, int]:
    found = {}
    for raw in records.values():
        # A record keeps what its submission fixed (params among them) in its JSON `spec`.
        match = re.search(r"tag=([\w-]+)", raw.get("spec", ""))
        if match:
            found[match.group(1)] = int(raw["attempts"])
    return found


def report(name: str, accepted: list[str], records: dict[str, dict], ran: Counter) -> int:
    """Prints the counts; `duplicated`: jobs that ran more often than they were delivered
    (at least once means a job cut short by a killed worker runs again, as attempt 2)."""
    finished = len(records)
    lost = len(accepted) - finished
    attempts = attempts_per_tag(records)
    duplicated = sum(1 for tag, count in ran.items() if count > attempts.get(tag, 0))
    redelivered = sum(1 for r in records.values() if int(r.get("attempts", 1)) > 1)
    print(
        f"\n{name}: accepted={len(accepted)} finished={finished} lost={lost} "
        f"duplicated={duplicated} (of {len(ran)} traced) redelivered={redelivered}"
    )
    return lost


def test_10k_submissions_while_a_worker_is_killed_and_restarted(load_stack: Stack) -> None:
    stack = load_stack
    victim = next(w for w in stack.workers if w.pool == "threads")

    def kill_and_restart() -> None:
        time.sleep(3)  # in the middle of the load
        for pid in [victim.pid, *(c.pid for c in psutil.Process(victim.pid).children())]:
            os.kill(pid, signal.SIGKILL)
        victim.process.wait(timeout=10)
        stack.stop_worker(victim)
        time.sleep(1)
        stack.start_worker("threads", 16)

    bodies = bodies_for(10_000, stack, "kill")
    accepted = hammer(stack, bodies, kill_and_restart)
    records = settle(stack, accepted)
    ran = executions_per_tag(stack)
    lost = report("worker killed", accepted, records, ran)
    attempts = attempts_per_tag(records)
    assert set(ran) == set(attempts)  # every traced job ran ...
    assert all(1 <= ran[tag] <= attempts[tag] for tag in ran)  # ... at most once a delivery
    assert sum(attempts.values()) - len(attempts) <= 16  # re-runs: only what the victim held
    assert len(accepted) == len(bodies)  # the API refused nothing
    assert lost == 0
    assert all(r["state"] == "succeeded" for r in records.values())


def test_api_restart_under_load_honours_every_202(load_stack: Stack) -> None:
    stack = load_stack

    def restart_api() -> None:
        time.sleep(1.5)
        assert stack.api is not None and stack.api.process is not None
        stack.api.process.send_signal(signal.SIGTERM)  # gunicorn finishes in-flight requests
        stack.api.process.wait(timeout=30)
        stack.start_api()

    # No http_get here: those call the API, which is down for a moment on purpose.
    bodies = bodies_for(3_000, stack, "restart", traced=False)
    accepted = hammer(stack, bodies, restart_api)
    records = settle(stack, accepted)
    lost = report("API restarted", accepted, records, Counter())
    assert 0 < len(accepted) <= len(bodies)
    assert lost == 0
    assert all(r["state"] == "succeeded" for r in records.values())
