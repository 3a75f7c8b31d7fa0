"""`Client`: the jobrunner HTTP API from Python. Submit jobs one at a time or by the
thousand, list them, read the catalog and the pools, and run the comparison lab."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import requests

from services.client import defaults
from services.client.errors import ApiError, BatchRejected, ExperimentFailed
from services.client.jobs import Job
from services.client.polling import poll
from services.client.transport import Transport
from services.core.vocabulary import FINAL_EXPERIMENT_STATES, POOL_NAMES

# Jobs the API takes in one POST /jobs/batch (MAX_BATCH_JOBS of api/models.py).
BATCH_SIZE = 1_000
# The largest page GET /jobs serves.
MAX_PAGE_SIZE = 500


class Client:
    """The API at `url` (else JOBRUNNER_URL, else http://127.0.0.1:8000), sending
    `api_key` (else JOBRUNNER_API_KEY, else the .run/api-key `make run` wrote).

    `timeout`: seconds one HTTP request may take. `retry_for`: how long a 429 or 503
    that says Retry-After is retried (GET and DELETE, and a submit with an
    idempotency_key; a 429 always) before it is raised as ApiError."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry_for: float = 10.0,
    ) -> None:
        key = api_key if api_key is not None else defaults.api_key()
        self._transport = Transport(url or defaults.api_url(), key, timeout, retry_for)

    @property
    def url(self) -> str:
        return self._transport.url

    @property
    def session(self) -> requests.Session:
        """The keep-alive session every request goes through (headers, proxies, TLS)."""
        return self._transport.session

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Any endpoint this class does not wrap (`/jobs/<id>/retry`, a chart): the 2xx
        response, else ApiError. kwargs as requests takes them (json, params, headers),
        and timeout / retry_for."""
        return self._transport.request(method, path, **kwargs)

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        workload: str,
        params: Mapping[str, Any] | None = None,
        *,
        pool: str | None = None,
        time_limit: int | None = None,
        max_retries: int | None = None,
        backoff: float | None = None,
        idempotency_key: str | None = None,
        **more_params: Any,
    ) -> Job:
        """Submit one job: `submit("sleep", seconds=0.1)`, or the params as a dict
        (needed for a param named like an option: pool, params, …). Options left None
        are the workload's or the API's defaults. With `idempotency_key`, the same key
        and body give the same job however often they are sent."""
        body = job_body(workload, params, more_params, pool, time_limit, max_retries, backoff)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        record = self._transport.request("POST", "/jobs", json=body, headers=headers).json()
        return Job(self._transport, record)

    def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Submit many jobs, each a dict as POST /jobs takes it
        (`{"workload": "sleep", "params": {"seconds": 0.1}, "pool": "threads"}`), 1,000 a
        request, each request all or nothing. BatchRejected if one is refused: its
        `accepted` are the jobs taken before it, its failing fields numbered as in `jobs`."""
        items = [dict(job) for job in jobs]
        accepted: list[Job] = []
        for start in range(0, len(items), BATCH_SIZE):
            chunk = items[start : start + BATCH_SIZE]
            try:
                answer = self._transport.request("POST", "/jobs/batch", json={"jobs": chunk})
            except ApiError as error:
                raise BatchRejected(error, start, start + len(chunk) - 1, accepted) from None
            accepted += [Job(self._transport, record) for record in answer.json()["jobs"]]
        return accepted

    def job(self, job_id: str) -> Job:
        """A job by its id (ApiError 404 for an unknown one, or one past its TTL)."""
        return Job(self._transport, {"id": job_id}).refresh()

    def jobs(
        self,
        *,
        state: str | None = None,
        pool: str | None = None,
        workload: str | None = None,
        limit: int | None = 50,
        page_size: int = 100,
    ) -> Iterator[dict[str, Any]]:
        """Job records, newest first, filtered; at most `limit` (None: all there are),
        fetched `page_size` (at most 500) a request as the iteration goes."""
        query = {"state": state, "pool": pool, "workload": workload}
        query = {name: value for name, value in query.items() if value is not None}
        left, cursor = limit, None
        while left is None or left > 0:
            size = min(page_size, MAX_PAGE_SIZE, left or MAX_PAGE_SIZE)
            page_query = {**query, "limit": size}
            if cursor is not None:
                page_query["cursor"] = cursor
            page = self._transport.request("GET", "/jobs", params=page_query).json()
            records = page["jobs"][:left] if left is not None else page["jobs"]
            yield from records
            if left is not None:
                left -= len(records)
            cursor = page.get("next_cursor")
            if cursor is None or not records:
                return

    # -- catalog and pools -----------------------------------------------------------------

    def workloads(self) -> list[dict[str, Any]]:
        """The catalog: each workload's name, kind, default pool, params_schema and the
        local executors the lab offers for it."""
        return self._transport.request("GET", "/workloads").json()["workloads"]

    def pools(self) -> dict[str, dict[str, Any]]:
        """Each pool by name: what it can enforce (capabilities), its queue depth
        (queued) and the workers serving it now."""
        answer = self._transport.request("GET", "/pools").json()
        return {pool["name"]: pool for pool in answer["pools"]}

    # -- the lab ---------------------------------------------------------------------------

    def compare(
        self,
        workload: str,
        params: Mapping[str, Any] | None = None,
        *,
        pools: Iterable[str] | None = None,
        executors: Iterable[str] | str = (),
        count: int = 20,
        concurrency: int = 8,
        timeout: float | None = 300.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
        **more_params: Any,
    ) -> dict[str, Any]:
        """Run `count` jobs of `workload` on each of `pools` and each local executor
        (sequential, threadpool, processpool, asyncio; "all": every one offered for the
        workload), one target at a time; the finished experiment, its `report` with the
        figures and the verdict. ExperimentFailed if it failed, TimeoutError after
        `timeout` s. Needs an `admin` key. `progress` gets the experiment at each poll.
        `pools` left out: every pool that can run the workload (not gevent for an async
        one)."""
        if isinstance(executors, str):
            executors = self.offered_executors(workload) if executors == "all" else [executors]
        if pools is None:
            pools = self.offered_pools(workload)
        body = {
            "workload": workload, "params": {**(params or {}), **more_params}, "count": count,
            "pools": list(pools), "local": list(executors), "concurrency": concurrency,
        }  # fmt: skip
        experiment = self._transport.request("POST", "/experiments", json=body).json()
        path = f"/experiments/{quote(experiment['id'], safe='')}"

        def fetch(request_timeout: float | None) -> dict[str, Any]:
            return self._transport.request("GET", path, timeout=request_timeout).json()

        def describe(last: dict[str, Any] | None) -> str:
            last = last or experiment
            done = ", ".join(f"{t} {p['done']}/{p['total']}" for t, p in last["progress"].items())
            return f"experiment {last['id']} still {last['state']} ({done})"

        finished = poll(
            fetch, lambda e: e["state"] in FINAL_EXPERIMENT_STATES, timeout, describe, progress
        )
        if finished["state"] != "succeeded":
            raise ExperimentFailed(finished)
        return finished

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """An experiment by its id: its state and progress, then its report."""
        path = f"/experiments/{quote(experiment_id, safe='')}"
        return self._transport.request("GET", path).json()

    def offered_executors(self, workload: str) -> list[str]:
        """The local executors the lab offers for `workload` (a name or module:function);
        none for a workload the catalog does not have (the API's 422 names it)."""
        entry = self._catalog_entry(workload)
        return list(entry["local_executors"]) if entry else []

    def offered_pools(self, workload: str) -> list[str]:
        """The pools that can run `workload`; every pool for one the catalog does not
        have (the API's 422 then names the workload)."""
        entry = self._catalog_entry(workload)
        return list(entry.get("pools") or POOL_NAMES) if entry else list(POOL_NAMES)

    def _catalog_entry(self, workload: str) -> dict[str, Any] | None:
        return next((e for e in self.workloads() if workload in (e["name"], e.get("ref"))), None)

    # -- the session -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the kept-alive connections (also on leaving a `with Client() as c:`)."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"


def job_body(
    workload: str,
    params: Mapping[str, Any] | None,
    more_params: Mapping[str, Any],
    pool: str | None,
    time_limit: int | None,
    max_retries: int | None,
    backoff: float | None,
) -> dict[str, Any]:
    """A POST /jobs body; options left None are left out (the workload's defaults)."""
    both = set(params or {}) & set(more_params)
    if both:
        raise TypeError(f"params given twice, in the dict and as keywords: {sorted(both)}")
    body: dict[str, Any] = {"workload": workload, "params": {**(params or {}), **more_params}}
    options = {
        "pool": pool, "time_limit": time_limit, "max_retries": max_retries, "backoff": backoff,
    }  # fmt: skip
    body.update({name: value for name, value in options.items() if value is not None})
    return body
