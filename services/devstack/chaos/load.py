"""The soak's clients: jobs of every pool submitted at a steady rate, as a careful client
submits them.

Each submission carries an Idempotency-Key. A request that got no answer (the API was
killed under it) or a 503 (Redis was down) is sent again with the same key until it is
answered or the client's patience runs out: a job the first request created is then
replayed, never created twice, and a submission whose fate stayed unknown is counted as
such. Every try is kept (when, what answer), so a fault can be told which requests it
overlapped.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

NO_ANSWER = "no answer"
# Share of the load per pool, and what each pool's jobs are: mostly sleeps long enough
# for a fault to catch them running, some instant ones, CPU work on prefork, a few that
# fail after a retry (a GET to a closed port: retryable, then failed), a few cancelled.
POOL_SHARES = {"threads": 0.35, "prefork": 0.25, "gevent": 0.40}
CLOSED_URL = "http://127.0.0.1:9/chaos"  # the discard port: nothing listens on a test host


@dataclass
class Try:
    at: float  # epoch seconds the request was sent
    answer: str  # the status code, or NO_ANSWER
    took: float
    error: str = ""  # for no answer: refused, reset, timeout, or the exception's class


@dataclass
class Submission:
    index: int
    pool: str
    workload: str
    body: dict[str, Any]
    key: str  # its Idempotency-Key
    cancel_after: float | None = None  # seconds after its 202 the client cancels it
    tries: list[Try] = field(default_factory=list)
    job_id: str | None = None
    replayed: bool = False  # its 202 came from a retry that found the job made before
    cancel_answer: str | None = None

    @property
    def outcome(self) -> str:
        """accepted (a 202), refused (answered, nothing accepted), or unresolved (some
        request got no answer and no later one said what became of it)."""
        if self.job_id is not None:
            return "accepted"
        if any(t.answer == NO_ANSWER for t in self.tries):
            return "unresolved"
        return "refused"


def job_mix(index: int, seed: int) -> tuple[str, str, dict[str, Any], float | None]:
    """(pool, workload, body, cancel_after) of submission `index`: the same for a seed."""
    rng = random.Random(f"{seed}:{index}")
    pool = rng.choices(list(POOL_SHARES), weights=list(POOL_SHARES.values()))[0]
    roll = rng.random()
    longest = {"threads": 2.5, "prefork": 2.0, "gevent": 3.0}[pool]
    sleep = {"workload": "sleep", "params": {"seconds": round(rng.uniform(0.3, longest), 2)}}
    cancel_after = None
    if roll < 0.05:
        body, cancel_after = sleep, round(rng.uniform(0.0, 1.5), 2)
    elif roll < 0.13 and pool != "prefork":
        body = {
            "workload": "http_get",
            "params": {"url": CLOSED_URL, "timeout": 2},
            "max_retries": 1,
            "backoff": 0.2,
        }
    elif roll < 0.28:
        body = {"workload": "noop", "params": {"value": index}}
    elif roll < 0.50 and pool == "prefork":
        body = {"workload": "cpu_hash", "params": {"rounds": rng.randint(20_000, 100_000)}}
    else:
        body = sleep
    return pool, body["workload"], {**body, "pool": pool}, cancel_after


def why_no_answer(exc: requests.RequestException) -> str:
    """refused (nothing listened), timeout (no answer in time), reset (the connection
    broke mid-request, or a kept-alive one was found dead), else the exception's class."""
    if isinstance(exc, requests.Timeout):
        return "timeout"
    text = repr(exc)
    if "Connection refused" in text or "Errno 111" in text:
        return "refused"
    if isinstance(exc, requests.ConnectionError):
        return "reset"
    return type(exc).__name__


class Load:
    """Submits `rate` jobs a second from `clients` client threads until stopped.

    `enter_client_host` runs first in every client thread (on a test bed, it moves the
    thread onto the API's host); `api_url` and `api_key` say where and as whom.
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        rate: float,
        seed: int,
        enter_client_host: Callable[[], None] = lambda: None,
        clients: int = 16,
        patience: float = 30.0,
    ) -> None:
        self.api_url = api_url
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.rate = rate
        self.seed = seed
        self.patience = patience
        self.submissions: list[Submission] = []
        self.cancels = Counter[str]()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(clients, "chaos-client", initializer=enter_client_host)
        self._dispatcher = threading.Thread(target=self._dispatch, name="chaos-load", daemon=True)
        self.started_at = 0.0
        self.stopped_at = 0.0

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = time.time()
        self._dispatcher.start()

    def stop(self) -> None:
        """No new submission; returns once every one sent has its answer (or gave up)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._dispatcher.ident is not None:  # started
            self._dispatcher.join()
        self._pool.shutdown(wait=True)
        self.stopped_at = time.time()

    def _dispatch(self) -> None:
        # Submission i is due at start + i / rate: a steady rate, and one that catches up
        # after a stall instead of drifting.
        start, index = time.monotonic(), 0
        while not self._stop.is_set():
            due = start + index / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                break
            pool, workload, body, cancel_after = job_mix(index, self.seed)
            key = f"chaos-{self.seed}-{index}"
            submission = Submission(index, pool, workload, body, key, cancel_after)
            with self._lock:
                self.submissions.append(submission)
            self._pool.submit(self._submit, submission)
            index += 1

    @property
    def http(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers.update(self.headers)
        return self._local.session

    def _submit(self, submission: Submission) -> None:
        headers = {"Idempotency-Key": submission.key}
        first, delay = time.monotonic(), 0.25
        while True:
            sent, clock = time.time(), time.monotonic()
            try:
                answer = self.http.post(
                    f"{self.api_url}/jobs", json=submission.body, headers=headers, timeout=10
                )
                status = str(answer.status_code)
                error = ""
            except requests.RequestException as exc:
                answer, status, error = None, NO_ANSWER, why_no_answer(exc)
            submission.tries.append(Try(sent, status, time.monotonic() - clock, error))
            if answer is not None and answer.status_code == 202:
                submission.job_id = answer.json()["id"]
                submission.replayed = answer.headers.get("Idempotent-Replayed") == "true"
                break
            retry = status == NO_ANSWER or status.startswith("5")
            if not retry or time.monotonic() - first > self.patience:
                return
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        if submission.cancel_after is not None:
            time.sleep(submission.cancel_after)
            self._cancel(submission)

    def _cancel(self, submission: Submission) -> None:
        try:
            answer = self.http.delete(f"{self.api_url}/jobs/{submission.job_id}", timeout=10)
            submission.cancel_answer = str(answer.status_code)
        except requests.RequestException:
            submission.cancel_answer = NO_ANSWER
        with self._lock:
            self.cancels[submission.cancel_answer] += 1

    # -- what happened -------------------------------------------------------------------

    def snapshot(self) -> list[Submission]:
        with self._lock:
            return list(self.submissions)

    def tries_between(self, start: float, end: float) -> Counter[str]:
        """The requests sent in [start, end] (epoch seconds), by answer."""
        return Counter(
            t.answer for s in self.snapshot() for t in list(s.tries) if start <= t.at <= end
        )

    def accepted_ids(self) -> list[str]:
        return [s.job_id for s in self.snapshot() if s.job_id is not None]
