"""What a network between the workers and Redis costs: throughput per pool at 0, 1, 2 and
5 ms of added round trip, in one run.

Each worker reaches Redis through a delaying TCP forwarder (services/devstack/delay_proxy.py;
this kernel has no netem), with the same delay forwarder at 0 ms as the baseline, so the
forwarder's own cost is in every figure. The jobs are sent straight to Redis: what is
measured is the worker's side. The promise checked here, and only here (never in a test:
machines are noisy): at 2 ms, each pool keeps at least half its 0 ms throughput.

    .venv/bin/python -m bench.side_by_side --only rtt
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.harness import Bench
from services.devstack.launcher import ManagedProcess
from services.devstack.probes import listening
from services.devstack.redis_server import free_port
from worker.profiles import worker_command

# Round trips added, in ms (the forwarder delays each way by half; its timers round up to
# whole milliseconds, so the measured round trip is shown beside each).
RTTS_MS = (0.0, 2.0, 5.0)
# The promise: at this round trip, at least this share of the 0 ms throughput.
PROMISED_RTT_MS, PROMISED_SHARE = 2.0, 0.5
# Per pool, its concurrency, the job that shows it (the measurements that found the
# problem) and the worker's settings beside the defaults. Prefork four times: at one
# process per core as it comes (its pipeline turns itself on once Redis is 1 ms away:
# worker/pipeline.py), with the pipeline on at +0 ms too, so that the share compares it
# with itself, and off, as prefork was before it; and with more processes than cores,
# the other way to hide a network's round trips.
CASES: list[tuple[str, int, str, dict[str, Any], dict[str, str]]] = [
    ("threads", 32, "noop", {}, {}),
    ("prefork", 2, "noop", {}, {}),
    ("prefork", 2, "noop", {}, {"WORKER_PREFORK_PIPELINE": "on"}),
    ("prefork", 2, "noop", {}, {"WORKER_PREFORK_PIPELINE": "off"}),
    ("prefork", 16, "noop", {}, {}),
    ("gevent", 500, "sleep", {"seconds": 0.05}, {}),
]
TABLE_FILE = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"
TABLE_START, TABLE_END = "<!-- rtt-table:start -->", "<!-- rtt-table:end -->"


@dataclass
class RttResult:
    pool: str
    concurrency: int
    workload: str
    params: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    rates: dict[float, list[float]] = field(default_factory=dict)

    @property
    def promised(self) -> bool:
        """Whether the promise is for this row: not for prefork with its pipeline turned
        off, the row that shows what the pipeline is for."""
        return self.env.get("WORKER_PREFORK_PIPELINE") != "off"

    @property
    def label(self) -> str:
        settings = "".join(f", {name}={value}" for name, value in self.env.items())
        return f"{self.pool} -c{self.concurrency}{settings}"

    @property
    def job(self) -> str:
        return self.workload + (f"({self.params['seconds']})" if self.params else "")

    def median(self, rtt: float) -> float:
        return statistics.median(self.rates[rtt])

    def share(self, rtt: float) -> float:
        return self.median(rtt) / self.median(0.0)


def start_forwarder(b: Bench, rtt_ms: float) -> tuple[ManagedProcess, str]:
    """A delay forwarder in front of the bench's Redis; the URL that goes through it."""
    port = free_port()
    redis_port = b.url.rsplit(":", 1)[1].split("/")[0]
    argv = [
        sys.executable, "-m", "services.devstack.delay_proxy",
        "--listen", f"127.0.0.1:{port}", "--to", f"127.0.0.1:{redis_port}",
        "--delay-ms", str(rtt_ms / 2),
    ]  # fmt: skip
    proc = b.spawn(argv, f"forwarder-{rtt_ms:g}ms")
    b.stack.wait_until(
        lambda: listening(port),
        10, "the delay forwarder did not listen", [proc],
    )  # fmt: skip
    return proc, re.sub(r":\d+/", f":{port}/", b.url)


def worker_through(b: Bench, result: RttResult, url: str, name: str) -> ManagedProcess:
    argv = worker_command(result.pool, result.concurrency, f"rtt-{result.pool}@bench", "WARNING")
    env = {**b.stack.env, **result.env, "REDIS_URL": url}
    managed = ManagedProcess(name, argv, env, b.workdir / f"{name}.log")
    return b.stack.start(managed)


def ping_ms(url: str) -> float:
    """The median round trip of a PING through `url`, in ms."""
    client = redis.Redis.from_url(url)
    client.ping()
    samples = []
    for _ in range(50):
        started = time.perf_counter()
        client.ping()
        samples.append((time.perf_counter() - started) * 1000)
    client.close()
    return statistics.median(samples)


def measure(b: Bench, result: RttResult, rtt: float, n: int, pings: dict[float, float]) -> None:
    forwarder, url = start_forwarder(b, rtt)
    name = f"rtt-{result.pool}-{result.concurrency}" + "".join(f"-{v}" for v in result.env.values())
    worker = worker_through(b, result, url, name)
    try:
        pings.setdefault(rtt, ping_ms(url))
        # Warm: connections, imports, pool processes.
        b.run_jr(result.workload, result.params, result.pool, 20, 120)
        for _ in range(b.reps):
            rate, _cmds = b.run_jr(result.workload, result.params, result.pool, n, 600)
            result.rates.setdefault(rtt, []).append(rate)
        print(f"  {name} at +{rtt:g} ms: {result.median(rtt):.0f} jobs/s")
    finally:
        b.stop(worker)
        b.stop(forwarder)


def bench_rtt(b: Bench) -> None:
    n = 300 if b.quick else 500
    results, pings = [], {}
    for pool, concurrency, workload, params, env in CASES:
        result = RttResult(pool, concurrency, workload, params, env)
        for rtt in RTTS_MS:
            measure(b, result, rtt, n, pings)
        results.append(result)
    text = render(results, n, b, pings)
    print(text)
    write_table(text)
    short = [r.label for r in results if r.promised and r.share(PROMISED_RTT_MS) < PROMISED_SHARE]
    if short:
        print(f"FAIL: below {PROMISED_SHARE:.0%} of 0 ms at {PROMISED_RTT_MS:g} ms: {short}")
    else:
        print(
            f"ok: every pool keeps >= {PROMISED_SHARE:.0%} of its 0 ms throughput at 2 ms "
            "(prefork with its pipeline off, shown for comparison, is not promised it)"
        )


def render(results: list[RttResult], n: int, b: Bench, pings: dict[float, float]) -> str:
    head = (
        "| pool | job | "
        + " | ".join(f"+{r:g} ms (PING {pings[r]:.2f} ms)" for r in RTTS_MS)
        + " |"
    )
    rule = "|---|---|" + "---:|" * len(RTTS_MS)
    rows = []
    for r in results:
        cells = [f"{r.median(rtt):.0f} jobs/s ({r.share(rtt):.0%})" for rtt in RTTS_MS]
        rows.append(f"| {r.label} | {r.job} | " + " | ".join(cells) + " |")
    when = time.strftime("%Y-%m-%d")
    command = ".venv/bin/python -m bench.side_by_side --only rtt" + (" --quick" if b.quick else "")
    return "\n".join(
        [
            f"Measured {when} with `{command}` (median of {b.reps} runs of {n} jobs; in",
            "brackets, the share of the same pool's throughput at +0 ms):",
            "",
            head,
            rule,
            *rows,
        ]
    )


def write_table(text: str) -> None:
    """Into docs/cluster.md, between its markers, so the page shows the latest run."""
    page = TABLE_FILE.read_text()
    start, end = page.find(TABLE_START), page.find(TABLE_END)
    if start < 0 or end < 0:
        print(f"(no {TABLE_START} markers in {TABLE_FILE}; table not written)")
        return
    TABLE_FILE.write_text(page[: start + len(TABLE_START)] + "\n" + text + "\n" + page[end:])
