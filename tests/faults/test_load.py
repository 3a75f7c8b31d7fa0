"""Under load, every 202 is honoured: while a worker is killed and restarted, and while
the API itself is killed and started again. Each test prints accepted / finished / lost
/ duplicated, and checks that its fault hit the load (a kill of a worker holding jobs,
an API away while clients were sending)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psutil
import pytest
import requests

from services.core import redis_keys
from tests.stack import Stack, bearer

CLIENTS = 50


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(
        tmp_path_factory.mktemp("load"),
        env_overrides={
            "JOB_VISIBILITY_TIMEOUT": "3",
            "JOB_MAX_TIME_LIMIT": "2",
            "API_RATE_LIMIT": "0",
            "API_WORKERS": "2",
        },
    ).running([("threads", 16), ("threads", 16), ("gevent", 100)]) as stack:
        yield stack


@dataclass
class Answers:
    """What the clients saw: the accepted jobs' ids, and when each answer (or connection
    error) came, with its status (0 for a connection error) and Retry-After."""

    accepted: list[str] = field(default_factory=list)
    seen: list[tuple[float, int, str | None]] = field(default_factory=list)

    def statuses(self) -> Counter[int]:
        return Counter(status for _, status, _ in self.seen)


def hammer(
    stack: Stack, bodies: list[dict], during: Callable[[], None], until_accepted: bool = False
) -> Answers:
    """POST every body from CLIENTS concurrent clients while `during` runs. A connection
    error is a refusal, not an acceptance; with `until_accepted`, a client sends the
    body again (after 50 ms) until it is accepted or 60 s have passed, as a client riding
    out a restart would, so the load goes on across it."""
    answers = Answers()
    lock = threading.Lock()

    def client(chunk: list[dict]) -> None:
        with requests.Session() as session:
            session.headers.update(bearer("admin"))
            for body in chunk:
                give_up = time.monotonic() + 60
                while True:
                    try:
                        answer = session.post(f"{stack.url}/jobs", json=body, timeout=30)
                        status, retry_after = answer.status_code, answer.headers.get("Retry-After")
                    except requests.RequestException:
                        status, retry_after = 0, None
                    with lock:
                        answers.seen.append((time.monotonic(), status, retry_after))
                        if status == 202:
                            answers.accepted.append(answer.json()["id"])
                    if status == 202 or not until_accepted or time.monotonic() > give_up:
                        break
                    time.sleep(0.05)

    chunks = [bodies[i::CLIENTS] for i in range(CLIENTS)]
    with ThreadPoolExecutor(max_workers=CLIENTS + 1) as pool:
        futures = [pool.submit(client, chunk) for chunk in chunks]
        pool.submit(during).result()
        for future in futures:
            future.result()
    return answers


def settle(stack: Stack, accepted: list[str], timeout: float = 240) -> dict[str, dict]:
    """Wait until every accepted job is final (or the time is up); their records. A job
    with no record at all is lost at once: a 202 is sent only once it is stored."""
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
            if not raw:
                pending.discard(job_id)  # never stored: lost
            elif raw.get("state") in ("succeeded", "failed", "cancelled"):
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
        elif traced and i % 200 == 1:  # and every 200th keeps a threads slot a while
            bodies.append({"workload": "sleep", "params": {"seconds": 1}, "pool": "threads"})
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
    """kill -9 of the threads worker running the most jobs, mid-load, and a new one:
    every job is recorded once, and only the jobs the victim was running when it died
    needed a second attempt (a job that ran twice for any other reason would show up
    with attempts 2 too)."""
    stack = load_stack
    held: list[str] = []

    def kill_and_restart() -> None:
        time.sleep(3)  # in the middle of the load
        threads = [w for w in stack.workers if w.pool == "threads"]
        victim = max(threads, key=lambda w: len(running_on(stack, w.node)))
        for pid in [victim.pid, *(c.pid for c in psutil.Process(victim.pid).children())]:
            os.kill(pid, signal.SIGKILL)
        victim.process.wait(timeout=10)
        # What it was running when it died: still `running` under its name, until the
        # lease lapses and another worker takes each over.
        held.extend(running_on(stack, victim.node))
        stack.stop_worker(victim)
        time.sleep(1)
        stack.start_worker("threads", 16)

    bodies = bodies_for(10_000, stack, "kill")
    answers = hammer(stack, bodies, kill_and_restart)
    accepted = answers.accepted
    records = settle(stack, accepted)
    ran = executions_per_tag(stack)
    lost = report("worker killed", accepted, records, ran)
    attempts = attempts_per_tag(records)
    assert held, "the kill hit a worker that was running nothing"
    assert set(ran) == set(attempts)  # every traced job ran ...
    assert all(1 <= ran[tag] <= attempts[tag] for tag in ran)  # ... at most once a delivery
    rerun = {job_id for job_id, r in records.items() if int(r.get("attempts", 1)) > 1}
    assert rerun == set(held), (sorted(rerun - set(held)), sorted(set(held) - rerun))
    assert len(accepted) == len(bodies)  # the API refused nothing
    assert lost == 0
    assert all(r["state"] == "succeeded" for r in records.values())


def running_on(stack: Stack, node: str | None) -> list[str]:
    """The jobs the records say `node` is running now."""
    client = stack.redis()
    running = client.zrange(redis_keys.job_index("state", "running"), 0, -1)
    pipe = client.pipeline(transaction=False)
    for job_id in running:
        pipe.hget(redis_keys.job(job_id), "worker_node")
    return [job_id for job_id, by in zip(running, pipe.execute(), strict=True) if by == node]


def test_api_killed_under_load_honours_every_202(load_stack: Stack) -> None:
    """kill -9 of the API (gunicorn and its workers: a crash, no graceful shutdown) in
    the middle of the load, then a new one, while clients keep sending (again, on a
    connection error, as a client riding out a restart does). Every 202 is a job that
    finishes: a job is answered only once it is stored. And nothing but 202 or a 503
    with Retry-After ever comes back, while the new API starts too (never a 500)."""
    stack = load_stack
    window: dict[str, float] = {}

    def kill_and_restart() -> None:
        time.sleep(1.5)
        assert stack.api is not None and stack.api.process is not None
        window["killed"] = time.monotonic()
        for pid in [stack.api.pid, *(c.pid for c in psutil.Process(stack.api.pid).children())]:
            os.kill(pid, signal.SIGKILL)
        stack.api.process.wait(timeout=30)
        stack.start_api()
        window["restarted"] = time.monotonic()

    # No http_get here: those call the API, which is down for a moment on purpose.
    bodies = bodies_for(3_000, stack, "restart", traced=False)
    answers = hammer(stack, bodies, kill_and_restart, until_accepted=True)
    records = settle(stack, answers.accepted)
    lost = report("API killed", answers.accepted, records, Counter())
    statuses = answers.statuses()
    print(f"answers: {dict(statuses)} (0: connection error)")
    # The fault hit the load: accepted before the kill, refused while it was away, and
    # accepted again from the new API.
    accepted_at = [at for at, status, _ in answers.seen if status == 202]
    assert min(accepted_at) < window["killed"] < window["restarted"] < max(accepted_at)
    assert statuses[0] > 0, "no request met the API down"
    assert set(statuses) <= {202, 503, 0}, statuses
    assert all(retry for _, status, retry in answers.seen if status == 503)
    assert len(answers.accepted) >= len(bodies)  # every body was accepted in the end
    assert lost == 0
    assert all(r["state"] == "succeeded" for r in records.values())
