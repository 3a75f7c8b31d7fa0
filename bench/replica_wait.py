"""What keeping accepted jobs through a failover costs an accept.

One primary, two replicas and three sentinels (services/devstack/sentinel.py, appendfsync
everysec as compose runs Redis), and an API on them in each of three ways:

- async: the default; a 202 means the primary has the job.
- min-replicas-to-write 1: Redis itself refuses writes unless a replica acknowledged
  within min-replicas-max-lag (10 s); no wait per write.
- JOB_ACCEPT_REPLICAS=1: every accept waits (Redis WAIT) until a replica has it.

Measured through HTTP, as a client sees it: the latency of POST /jobs one at a time, and
the jobs/s of POST /jobs/batch with 1,000 jobs a request. And in this process, without
HTTP: the time `submit_job` takes, with and without the WAIT, which is the cost itself.
The ways take turns, round after round, so the machine's noise falls on all of them
alike; medians over the rounds.

    .venv/bin/python -m bench.replica_wait [--rounds 5] [--singles 300] [--batches 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import redis
import requests

from services.broker.celery_app import make_celery
from services.core.api_keys import hash_key, new_key
from services.core.redis_clients import redis_client
from services.core.settings import get_settings
from services.devstack.launcher import Launcher
from services.devstack.redis_server import free_port
from services.devstack.sentinel import SentinelGroup
from services.jobs.store import JobStore
from services.jobs.submission import JobSpec, submit_job

WAYS = ("async", "min-replicas-to-write 1", "JOB_ACCEPT_REPLICAS=1")
BATCH = 1_000


def measure(
    url: str, http: requests.Session, singles: int, batches: int
) -> tuple[list[float], float]:
    """The latencies (s) of `singles` POST /jobs, and the jobs/s of `batches` batches."""
    latencies = []
    for i in range(singles):
        started = time.perf_counter()
        response = http.post(f"{url}/jobs", json={"workload": "noop", "params": {"value": i}})
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 202, response.text
    body = {"jobs": [{"workload": "noop", "params": {"value": i}} for i in range(BATCH)]}
    started = time.perf_counter()
    for _ in range(batches):
        response = http.post(f"{url}/jobs/batch", json=body)
        assert response.status_code == 202, response.text
    return latencies, batches * BATCH / (time.perf_counter() - started)


def submit_times(url: str, accept_replicas: int, n: int) -> list[float]:
    """Seconds each of `n` submit_job calls took in this process, JOB_ACCEPT_REPLICAS
    as given (read from the environment, as the API reads it)."""
    os.environ["JOB_ACCEPT_REPLICAS"] = str(accept_replicas)
    get_settings.cache_clear()
    settings = get_settings()
    store = JobStore(redis_client(url, settings=settings), settings.job_result_ttl)
    celery = make_celery(settings)
    spec = JobSpec(workload="noop", params={"value": 1}, pool="threads")
    submit_job(store, celery, spec)  # the message template, the script: loaded once
    times = []
    for _ in range(n):
        started = time.perf_counter()
        submit_job(store, celery, spec)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="replica-wait-"))
    secret = new_key()
    group = SentinelGroup(folder / "group", fsync="everysec")
    apis: dict[str, Launcher] = {}
    try:
        group.start()
        for accept_replicas in ("0", "1"):
            api = Launcher(
                folder / f"api-{accept_replicas}",
                overrides={
                    "JOBRUNNER_API_KEYS": f"bench:read+submit+admin:{hash_key(secret)}",
                    "REDIS_SENTINEL_MASTER": group.master_name,
                    "JOB_ACCEPT_REPLICAS": accept_replicas,
                    "API_RATE_LIMIT": "0",
                },
            )
            api.use_redis(group.url)
            api.start_api("127.0.0.1", free_port())
            api.wait_api_ready()
            apis[accept_replicas] = api
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {secret}"
        primary = redis.Redis("127.0.0.1", group.primary().port)

        latencies: dict[str, list[float]] = {way: [] for way in WAYS}
        rates: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                primary.config_set("min-replicas-to-write", 1 if way == WAYS[1] else 0)
                api = apis["1" if way == WAYS[2] else "0"]
                seen, rate = measure(api.api_url, http, args.singles, args.batches)
                latencies[way].append(statistics.median(seen))
                latencies[way].append(statistics.quantiles(seen, n=100)[98])
                rates[way].append(rate)
                primary.flushdb()  # no workers here: keep Redis small between rounds
        os.environ["REDIS_SENTINEL_MASTER"] = group.master_name
        in_process: dict[int, list[float]] = {0: [], 1: []}
        for _ in range(args.rounds):
            for accept_replicas in (0, 1):
                times = submit_times(group.url, accept_replicas, args.singles)
                in_process[accept_replicas].append(statistics.median(times))
                primary.flushdb()
        print(f"\n{args.rounds} rounds; POST /jobs x{args.singles}, /jobs/batch x{args.batches}")
        print("| accept | POST /jobs p50 | p99 | POST /jobs/batch |")
        print("| --- | --- | --- | --- |")
        for way in WAYS:
            p50 = statistics.median(latencies[way][0::2]) * 1000
            p99 = statistics.median(latencies[way][1::2]) * 1000
            rate = statistics.median(rates[way])
            print(f"| {way} | {p50:.2f} ms | {p99:.2f} ms | {rate:,.0f} jobs/s |")
        for accept_replicas, medians in in_process.items():
            median = statistics.median(medians) * 1000
            print(f"submit_job in process, JOB_ACCEPT_REPLICAS={accept_replicas}: {median:.3f} ms")
    finally:
        for api in apis.values():
            api.stop()
        group.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
