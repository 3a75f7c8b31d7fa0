"""A real jobrunner stack for the tests: the launcher's processes, plus what a test needs
to talk to them.

Every part is a real process started by services/devstack/launcher.py from the same
commands `make run` uses; nothing is mocked. Tests talk to it over HTTP and read Redis
directly only to check what is stored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis
import requests

from services.broker.celery_app import make_celery
from services.client.session import ExpiringSession
from services.core.api_keys import hash_key
from services.core.redis_clients import redis_client
from services.core.settings import Settings
from services.core.vocabulary import FINAL_JOB_STATES
from services.devstack.launcher import Launcher
from services.devstack.processes import ManagedProcess
from services.devstack.redis_server import free_port

FINAL = {str(state) for state in FINAL_JOB_STATES}
T = TypeVar("T")

# API keys of the test stack, by name, with their scopes: one per scope boundary.
TEST_KEYS = {
    "admin": ("read+submit+admin", "test-admin-key"),
    "submitter": ("read+submit", "test-submit-key"),
    "reader": ("read", "test-read-key"),
}


def api_keys_setting() -> str:
    """JOBRUNNER_API_KEYS for TEST_KEYS: hashes only, as an operator would configure."""
    return ",".join(
        f"{name}:{scopes}:{hash_key(secret)}" for name, (scopes, secret) in TEST_KEYS.items()
    )


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_KEYS[name][1]}"}


class JobsApi:
    """Submitting jobs and reading them back over the API, as a test client: `url` and
    `http` (a session carrying the credentials) are the subclass's."""

    url: str
    http: requests.Session

    def through(self, call: Callable[[], T]) -> T:
        """Where a request is made from: here, this process; a test bed's client makes it
        from a host of the bed (tests/cluster/)."""
        return call()

    def submit(self, workload: str, params: dict[str, Any] | None = None, **extra: Any) -> dict:
        body = {"workload": workload, "params": params or {}, **extra}
        response = self.through(lambda: self.http.post(f"{self.url}/jobs", json=body, timeout=10))
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.through(lambda: self.http.get(f"{self.url}/jobs/{job_id}", timeout=10))
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
        while pending:
            job_id = pending[0]
            # Not job(): while Redis or the API restarts (the fault tests), a 503 is an
            # answer to poll past, not a failure.
            url = f"{self.url}/jobs/{job_id}"
            record = self.through(lambda url=url: self.http.get(url, timeout=10)).json()
            if record.get("state") in states:
                done[job_id] = record
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {record.get('state')}: {record}")
            time.sleep(0.05)
        return [done[i] for i in ids]


class Stack(Launcher, JobsApi):
    """Redis + API + workers, all real processes, in `workdir`, with the test keys."""

    def __init__(self, workdir: Path, env_overrides: dict[str, str] | None = None) -> None:
        overrides = {"API_HOST": "127.0.0.1", "JOBRUNNER_API_KEYS": api_keys_setting()}
        super().__init__(workdir, overrides={**overrides, **(env_overrides or {})})
        self.api_port = free_port()
        self._http: requests.Session | None = None

    @property
    def workdir(self) -> Path:
        """Where every process logs (api.log, threads-1.log, …) and Redis keeps its data."""
        return self.folder

    # -- starting and stopping -----------------------------------------------------------

    def start_api(self, host: str | None = None, port: int | None = None) -> ManagedProcess:
        return super().start_api(host or "127.0.0.1", port or self.api_port)

    @contextlib.contextmanager
    def running(self, workers: Iterable[tuple[str, int | None]] = ()) -> Iterator[Stack]:
        """Redis, the API and `workers` (pool, concurrency; a pool named twice gets two
        workers) started and answering; every process stopped on leaving, whatever
        happened. A test module's fixture: `with Stack(...).running(...) as stack:`."""
        try:
            self.start_redis()
            self.start_api()
            for pool, concurrency in workers:
                self.start_worker(pool, concurrency)
            self.wait_ready()
            yield self
        finally:
            self.stop()

    def restart_dead_workers(self) -> list[ManagedProcess]:
        """What compose's restart policy and the local runner do for a worker that exited
        (the API, if it died, is left dead for the test to see)."""
        return self.restart_dead(among=self.workers)

    def stop_worker(self, worker: ManagedProcess, sig: int = signal.SIGTERM) -> None:
        """Stop a worker (one a test killed is only forgotten) and never restart it."""
        self.stop_process(worker, sig)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the API answers and every started worker answers Celery's ping."""
        assert self.redis_url is not None
        celery = make_celery(self.settings())

        def live_nodes() -> set[str]:
            return {node for reply in celery.control.ping(timeout=0.5) for node in reply}

        self.wait_api_ready(timeout)
        self.wait_workers_ready(live_nodes, timeout)

    # -- talking to it -------------------------------------------------------------------

    @property
    def http(self) -> requests.Session:
        """A client session carrying whatever every request needs (credentials)."""
        if self._http is None:
            self._http = ExpiringSession()
            self._http.headers.update(bearer("admin"))
        return self._http

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def settings(self) -> Settings:
        """The settings the stack's processes run with (its environment), for the clients
        a test makes: the same Redis, with the same TLS files."""
        env = self.env
        return Settings(**{f: env[f.upper()] for f in Settings.model_fields if f.upper() in env})

    def redis(self) -> redis.Redis:
        assert self.redis_url is not None
        return redis_client(self.redis_url, settings=self.settings())


def workload_module(folder: Path, module: str, source: str) -> dict[str, str]:
    """Write `module` into `folder`; the environment under which the stack's processes
    (and the process pools they spawn) load its workloads."""
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {"JOBRUNNER_WORKLOADS": module, "PYTHONPATH": path}


def makespan(records: list[dict]) -> float:
    """From the first submission to the last finish, by the recorded timestamps."""
    return max(r["finished_at"] for r in records) - min(r["submitted_at"] for r in records)
