"""A real jobrunner stack for tests and benchmarks: redis-server, workers, the API.

Every part is a real process started from the same commands `make run` uses; nothing is
mocked. Tests talk to it over HTTP and read Redis directly only to check what is stored.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from services.broker import make_celery
from services.redis_server import RedisServer, free_port
from services.settings import Settings

FINAL = {"succeeded", "failed", "cancelled"}

# API keys of the test stack, by name, with their scopes: one per scope boundary.
TEST_KEYS = {
    "admin": ("read+submit+admin", "test-admin-key"),
    "submitter": ("read+submit", "test-submit-key"),
    "reader": ("read", "test-read-key"),
}


def api_keys_setting() -> str:
    """JOBRUNNER_API_KEYS for TEST_KEYS: hashes only, as an operator would configure."""
    return ",".join(
        f"{name}:{scopes}:{hashlib.sha256(secret.encode()).hexdigest()}"
        for name, (scopes, secret) in TEST_KEYS.items()
    )


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_KEYS[name][1]}"}


@dataclass
class WorkerProcess:
    pool: str
    node: str
    process: subprocess.Popen[bytes]
    log_path: Path
    concurrency: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Stack:
    """Redis + API + workers, all real processes, in `workdir`."""

    workdir: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    redis_server: RedisServer | None = None
    api: subprocess.Popen[bytes] | None = None
    api_port: int = 0
    workers: list[WorkerProcess] = field(default_factory=list)
    _counter: int = 0
    _http: requests.Session | None = None

    # -- starting ----------------------------------------------------------------------

    def start_redis(self, fsync: str = "always") -> None:
        self.redis_server = RedisServer(self.workdir / "redis", fsync=fsync).start()

    @property
    def env(self) -> dict[str, str]:
        assert self.redis_server is not None
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_server.url,
            API_HOST="127.0.0.1",
            API_PORT=str(self.api_port),
            PYTHONUNBUFFERED="1",
            JOBRUNNER_API_KEYS=api_keys_setting(),
        )
        env.update(self.env_overrides)
        return env

    def start_api(self) -> None:
        self.api_port = self.api_port or free_port()
        log = (self.workdir / "api.log").open("ab")
        self.api = subprocess.Popen(
            [sys.executable, "-m", "api"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def start_worker(self, pool: str, concurrency: int | None = None) -> WorkerProcess:
        self._counter += 1
        node = f"{pool}-{self._counter}@test"
        log_path = self.workdir / f"worker-{pool}-{self._counter}.log"
        # The very command compose and the local runner use.
        argv = [sys.executable, "-m", "worker", "--pool", pool, "--name", node]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        process = subprocess.Popen(
            argv, env=self.env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT
        )
        worker = WorkerProcess(pool, node, process, log_path, concurrency)
        self.workers.append(worker)
        return worker

    def restart_dead_workers(self) -> list[WorkerProcess]:
        """What compose's restart policy and the local runner do for a worker that exited."""
        dead = [w for w in self.workers if w.process.poll() is not None]
        for worker in dead:
            self.workers.remove(worker)
            self.start_worker(worker.pool, worker.concurrency)
        return dead

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the API answers and every started worker answers Celery's ping."""
        celery = make_celery(Settings(redis_url=self.env["REDIS_URL"]))
        deadline = time.monotonic() + timeout
        expected = {w.node for w in self.workers if w.process.poll() is None}
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                ready = self.http.get(f"{self.url}/readyz", timeout=5).status_code == 200
                answered = {node for reply in celery.control.ping(timeout=0.5) for node in reply}
                if ready and expected <= answered:
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"stack not ready in {timeout}s; logs in {self.workdir}")

    def _check_alive(self) -> None:
        if self.api is not None and self.api.poll() is not None:
            raise RuntimeError(f"API exited: {(self.workdir / 'api.log').read_text()[-3000:]}")

    # -- stopping ----------------------------------------------------------------------

    def stop_worker(self, worker: WorkerProcess, sig: int = signal.SIGTERM) -> None:
        if worker.process.poll() is None:
            worker.process.send_signal(sig)
            try:
                worker.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        if worker in self.workers:
            self.workers.remove(worker)

    def stop(self) -> None:
        for worker in list(self.workers):
            self.stop_worker(worker)
        if self.api is not None and self.api.poll() is None:
            self.api.terminate()
            self.api.wait(timeout=20)
        if self.redis_server is not None:
            self.redis_server.stop()

    # -- talking to it -----------------------------------------------------------------

    @property
    def http(self) -> requests.Session:
        """A client session carrying whatever every request needs (credentials)."""
        if self._http is None:
            self._http = requests.Session()
            self._http.headers.update(bearer("admin"))
        return self._http

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def redis(self) -> redis.Redis:
        assert self.redis_server is not None
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def submit(self, workload: str, params: dict[str, Any] | None = None, **extra: Any) -> dict:
        body = {"workload": workload, "params": params or {}, **extra}
        response = self.http.post(f"{self.url}/jobs", json=body, timeout=10)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.http.get(f"{self.url}/jobs/{job_id}", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(
        self, job_ids: Iterable[str], timeout: float = 60.0, states: set[str] = FINAL
    ) -> list[dict]:
        """Poll until every job is in one of `states`; the records, in the given order."""
        ids = list(job_ids)
        pending = list(ids)
        done: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        session = self.http
        while pending:
            job_id = pending[0]
            record = session.get(f"{self.url}/jobs/{job_id}", timeout=10).json()
            if record.get("state") in states:
                done[job_id] = record
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {record.get('state')}: {record}")
            time.sleep(0.05)
        return [done[i] for i in ids]


def makespan(records: list[dict]) -> float:
    """From the first submission to the last finish, by the recorded timestamps."""
    return max(r["finished_at"] for r in records) - min(r["submitted_at"] for r in records)
