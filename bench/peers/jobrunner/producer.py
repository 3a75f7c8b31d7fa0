"""jobrunner's side of the bench, over HTTP as a user sends jobs:

- one by one: a `POST /jobs` per job on one kept-alive connection (the standard library's
  client: `requests` adds ~0.45 ms of its own a call, docs/performance.md), or through
  `jobrunner.Client.submit` (options "via": "client": the client users are given);
- bulk: `POST /jobs/batch`, 1,000 jobs a request, each request's body built in the run.

The last result is waited for on the succeeded index (one ZCOUNT a poll); the results
are read back through `GET /jobs` pages (`Client.jobs`), newest first. The API's URL and
key come from JOBRUNNER_URL and JOBRUNNER_API_KEY, as for any client.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

import redis

from bench.peers.driver import MISSING, serve
from services.client import Client
from services.core import redis_keys

BATCH = 1_000
PARAM = {"noop": "value", "sleep": "seconds"}


class JobrunnerProducer:
    poll_command = "zcount"
    bulk_path = "POST /jobs/batch"

    def __init__(self, url: str) -> None:
        self.client = Client(os.environ["JOBRUNNER_URL"], os.environ["JOBRUNNER_API_KEY"])
        where = urlsplit(self.client.url)
        self.connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=60)
        self.headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {os.environ['JOBRUNNER_API_KEY']}",
        }
        self.since = 0.0
        self.pool = ""

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body)
        try:
            self.connection.request("POST", path, body=data, headers=self.headers)
            response = self.connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            # gunicorn closes a connection idle for 2 s (between runs): the request was
            # not read, so it is sent again on a new one.
            self.connection.close()
            self.connection.request("POST", path, body=data, headers=self.headers)
            response = self.connection.getresponse()
        payload = response.read()
        if response.status != 202:
            raise RuntimeError(f"{path}: {response.status} {payload[:300]!r}")
        return json.loads(payload)

    def send(
        self, workload: str, args: list[Any], bulk: bool, options: dict[str, Any]
    ) -> list[Any]:
        self.pool = options["pool"]
        self.since = time.time()
        jobs = [{"workload": workload, "params": {PARAM[workload]: a[0]}, "pool": self.pool}
                for a in args]  # fmt: skip
        if bulk:
            ids: list[str] = []
            for start in range(0, len(jobs), BATCH):
                answer = self.post("/jobs/batch", {"jobs": jobs[start : start + BATCH]})
                ids += [record["id"] for record in answer["jobs"]]
            return ids
        if options.get("via") == "client":
            submit = self.client.submit
            return [submit(j["workload"], j["params"], pool=j["pool"]).id for j in jobs]
        return [self.post("/jobs", job)["id"] for job in jobs]

    def result_keys(self, handles: list[Any]) -> list[str] | None:
        return None  # records exist from submission: count the succeeded index instead

    def count_done(self, client: redis.Redis, handles: list[Any]) -> int:
        index = redis_keys.job_index("state", "succeeded")
        return int(client.zcount(index, int(self.since * 1_000_000) - 1, "+inf"))

    def results(self, handles: list[Any]) -> list[Any]:
        wanted, found = set(handles), {}
        for record in self.client.jobs(
            state="succeeded", pool=self.pool, limit=None, page_size=500
        ):
            if record["id"] in wanted:
                found[record["id"]] = record["result"]
            if len(found) == len(wanted) or record["submitted_at"] < self.since - 1:
                break
        return [found.get(i, MISSING) for i in handles]


if __name__ == "__main__":
    serve(JobrunnerProducer, {"library": "jobrunner", "version": "working tree"})
