"""How fast one connection can send jobs over HTTP at all, on this machine: the `ceiling`
step, measured in the same run as the peers.

jobrunner's one-by-one figure is a `POST /jobs` per job on one kept-alive connection. A
peer's producer enqueues in its own process (Huey: 0.1 ms of CPU a job). This step sends
the same requests, with the same client, to:

- a bare Flask app (bench/peers/bare_app.py: read the body, answer 202, nothing else)
  under the API's own gunicorn command line (`api/__main__.py`): the web stack alone;
- jobrunner's API with no worker: the API's accept rate (key, validation, the one Redis
  script that stores and queues the job).

Each is a rate no end-to-end figure through that connection can pass; set next to the
best peer's no-op rate of the peers step, it says whether the one-by-one target can be
met over HTTP here, whatever the worker does.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
from typing import Any

from api.__main__ import gunicorn_command
from bench.harness import Bench
from bench.report import Row
from services.devstack.probes import listening
from services.devstack.redis_server import free_port

REQUESTS = 3_000
WARMUP = 200
REPS = 3
BODY = json.dumps({"workload": "noop", "params": {"value": 1}, "pool": "threads"})


def bare_argv(port: int) -> list[str]:
    """The API's gunicorn command (workers, threads, access log, config), serving the
    bare app on `port` instead of the API."""
    argv = gunicorn_command()
    argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
    argv[-1] = "bench.peers.bare_app:create_app()"
    return argv


def one_connection_rate(port: int, headers: dict[str, str], requests: int) -> float:
    """Requests a second from one kept-alive connection, each waiting for its 202 (the
    bench's jobrunner producer, bench/peers/jobrunner/producer.py, sends the same way)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = {"Content-Type": "application/json", **headers}

    def send(count: int) -> None:
        for _ in range(count):
            connection.request("POST", "/jobs", body=BODY, headers=sent)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 202:
                raise RuntimeError(f"POST /jobs: {response.status} {answer[:200]!r}")

    try:
        send(WARMUP)
        started = time.perf_counter()
        send(requests)
        return requests / (time.perf_counter() - started)
    finally:
        connection.close()


def bench_ceiling(b: Any) -> None:
    """The two rates, alternating repetition by repetition, beside the peers' best."""
    from bench.peers.steps import SESSION, own_stack

    requests = REQUESTS // 3 if b.quick else REQUESTS
    bare_rates: list[float] = []
    api_rates: list[float] = []
    with own_stack(b, "ceiling") as own:
        assert isinstance(own, Bench)
        port = free_port()
        bare = own.stack.start_program("bare-flask", bare_argv(port))
        own.stack.wait_until(
            lambda: listening(port), 30, "the bare Flask app did not listen", [bare]
        )
        key = own.stack.http.headers["Authorization"]
        api_port = own.stack.api_port
        for rep in range(REPS):
            order = [("bare", bare_rates), ("api", api_rates)]
            for name, rates in order if rep % 2 == 0 else order[::-1]:
                if name == "bare":
                    rates.append(one_connection_rate(port, {}, requests))
                else:
                    rates.append(one_connection_rate(api_port, {"Authorization": key}, requests))
    best = SESSION.best.get("noop one")
    peer = [best.rate] if best else []
    note = f"'stock' column = best peer end to end ({best.label})" if best else "peers not run"
    b.rows += [
        Row(
            "POST /jobs on one connection, bare Flask on the API's gunicorn vs best peer's "
            "no-op one by one", f"reported ({note})", "req/s", peer, bare_rates,
        ),
        Row(
            "POST /jobs on one connection, jobrunner's API accepting (no worker) vs best "
            "peer's no-op one by one", f"reported ({note})", "req/s", peer, api_rates,
        ),
    ]  # fmt: skip
    lines = [
        "## How fast one HTTP connection sends jobs here (issue 13)\n",
        f"{requests:,} `POST /jobs` on one kept-alive connection (after {WARMUP} unmeasured), "
        f"{REPS} repetitions alternating, medians; the API's own gunicorn command line "
        "(`api/__main__.py`) for both.\n",
        "| server | req/s (median) | every repetition |",
        "| --- | ---: | --- |",
        f"| bare Flask app (read the body, answer 202) | {statistics.median(bare_rates):,.0f} "
        f"| {', '.join(f'{r:,.0f}' for r in bare_rates)} |",
        f"| jobrunner's API, no worker | {statistics.median(api_rates):,.0f} "
        f"| {', '.join(f'{r:,.0f}' for r in api_rates)} |",
    ]
    if best:
        lines.append(f"| best peer, no-op end to end, one by one ({best.label}) | "
                     f"{best.rate:,.0f} | (peers step) |")  # fmt: skip
    SESSION.sections.append("\n".join(lines) + "\n")
