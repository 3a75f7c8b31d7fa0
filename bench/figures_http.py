"""The HTTP figures: POST /jobs against Flower, submit-to-result latency, and listing with
many stored jobs."""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from bench.harness import STOCK_APP, Bench
from bench.report import Row
from services.catalog.pools import POOLS
from services.core import redis_keys
from services.devstack.redis_server import free_port
from services.jobs.submission import JobSpec, new_record

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
{headers}
"""


def wrk(url: str, body: str, headers: dict[str, str], seconds: int, workdir: Path) -> float:
    """2xx requests/s from wrk: 32 connections on 2 threads."""
    script = workdir / "post.lua"
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script.write_text(WRK_SCRIPT.format(body=body, headers=lines))
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines_out = out.splitlines()
    rate = float(next(x for x in lines_out if x.startswith("Requests/sec")).split()[1])
    total = int(next(x for x in lines_out if "requests in" in x).split()[0])
    bad = sum(int(x.split()[-1]) for x in lines_out if "Non-2xx" in x)
    return rate * (total - bad) / total if total else 0.0


def bench_http_post(b: Bench) -> None:
    row = Row("POST /jobs, 32 clients (wrk) vs Flower async-apply", ">= 2x", "req/s")
    if shutil.which("wrk") is None:
        row.note = "wrk not installed (apt-get install -y wrk): not measured"
        b.rows.append(row)
        return
    port = free_port()
    # Flower 2 serves its HTTP API only with auth configured, or with this switch.
    b.stack.overrides["FLOWER_UNAUTHENTICATED_API"] = "true"
    flower = b.spawn(
        [sys.executable, "-m", "celery", "-A", STOCK_APP, "flower",
         f"--port={port}", "--address=127.0.0.1"],
        "flower",
    )  # fmt: skip
    seconds = 5 if b.quick else 10
    flower_url = f"http://127.0.0.1:{port}/api/task/async-apply/stock.noop"
    try:
        b.stack.wait_until(
            lambda: requests.post(flower_url, json={"args": []}, timeout=2).ok,
            60, "flower did not start", [flower], every=0.3,
        )  # fmt: skip
        jr_headers = {"Authorization": str(b.stack.http.headers["Authorization"])}
        jr_body = json.dumps({"workload": "noop", "params": {}, "pool": "threads"})
        for rep in range(b.reps):
            b.alternate(
                rep,
                lambda: row.stock.append(
                    wrk(flower_url, json.dumps({"args": []}), {}, seconds, b.workdir)
                ),
                lambda: row.jobrunner.append(
                    wrk(f"{b.stack.url}/jobs", jr_body, jr_headers, seconds, b.workdir)
                ),
            )
            print(f"  {row.figure}: flower {row.stock[-1]:.0f}, jr {row.jobrunner[-1]:.0f}")
    finally:
        b.stop(flower)
        b.redis().delete("stock", POOLS["threads"].queue)
    row.note = "'stock' column = Flower"
    b.rows.append(row)


def bench_latency(b: Bench) -> None:
    """Submit -> result visible over HTTP, one client, one job at a time (light load)."""
    p50 = Row("no-op via HTTP submit->result visible, p50", "<= 5 ms", "ms")
    p99 = Row("no-op via HTTP submit->result visible, p99", "<= 20 ms", "ms")
    n = 100 if b.quick else 200  # per repetition; p50 and p99 are medians of repetitions
    worker = b.jobrunner_worker("threads", POOLS["threads"].concurrency)
    # The standard library's client on one kept-alive connection: requests adds time of its
    # own to every call, comparable to what is measured here (docs/performance.md), which
    # is the client's time, not jobrunner's.
    conn = http.client.HTTPConnection("127.0.0.1", b.stack.api_port, timeout=10)
    headers = {"Content-Type": "application/json", **b.stack.http.headers}
    body = json.dumps({"workload": "noop", "params": {}, "pool": "threads"})

    def call(method: str, path: str, payload: str | None = None) -> dict[str, Any]:
        conn.request(method, path, body=payload, headers=headers)
        return json.loads(conn.getresponse().read())

    try:
        b.run_jr("noop", {}, "threads", 20, 60)
        for _ in range(b.reps):
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                job = call("POST", "/jobs", body)
                while call("GET", f"/jobs/{job['id']}")["state"] != "succeeded":
                    time.sleep(0.0005)
                samples.append((time.perf_counter() - t0) * 1000)
            samples.sort()
            p50.jobrunner.append(samples[len(samples) // 2])
            p99.jobrunner.append(samples[max(0, int(len(samples) * 0.99) - 1)])
            print(f"  submit->visible: p50 {p50.jobrunner[-1]:.2f} ms, p99 {p99.jobrunner[-1]:.2f}")
    finally:
        conn.close()
        b.stop(worker)
    p50.note = p99.note = "absolute target; threads pool; keep-alive client polls every 0.5 ms"
    b.rows += [p50, p99]


def bench_listing(b: Bench) -> None:
    """GET /jobs?limit=50 with 1,000 stored jobs, then with 100,000."""
    row = Row("GET /jobs?limit=50: 100,000 stored vs 1,000", "<= 1.5x", "ms")
    client = b.redis()
    for name in client.scan_iter(match=f"{redis_keys.job_index()}*", count=10_000):
        client.delete(name)
    store, http, url = b.store(), b.stack.http, f"{b.stack.url}/jobs?limit=50"

    def fill(n: int) -> None:
        for start in range(0, n, 5_000):
            pipe = store.redis.pipeline(transaction=False)
            for _ in range(min(5_000, n - start)):
                store.create(new_record(JobSpec("noop", {}, "threads")), pipe=pipe)
            pipe.execute()

    def timed() -> float:
        samples = []
        for _ in range(50 if b.quick else 200):
            t0 = time.perf_counter()
            assert http.get(url, timeout=10).status_code == 200
            samples.append((time.perf_counter() - t0) * 1000)
        return statistics.median(samples)

    fill(1_000)
    row.stock += [timed() for _ in range(b.reps)]
    fill(99_000)
    row.jobrunner += [timed() for _ in range(b.reps)]
    row.note = "'stock' column = the same API with 1,000 jobs stored"
    b.rows.append(row)
