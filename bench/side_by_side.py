"""Issue 4's whole table: jobrunner against stock Celery and Flower, side by side, one run.

One private redis-server serves both sides. For every figure the stock run and the
jobrunner run alternate (stock first on even repetitions, jobrunner first on odd ones),
so drift on this shared machine hits both; the table shows medians and jobrunner / stock.

    .venv/bin/python -m bench.side_by_side            # full run
    .venv/bin/python -m bench.side_by_side --quick    # fewer jobs and repetitions
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celery
import psutil
import redis
import requests

from bench.report import Row, chart, table
from services import keys
from services.broker import make_celery
from services.jobs import JobStore
from services.pools import POOLS
from services.redis_server import free_port
from services.settings import Settings
from services.submission import JobSpec, new_record, submit_jobs
from tests.stack import Stack
from worker.profiles import worker_command

ROOT = Path(__file__).resolve().parent.parent
# Each run writes its table here; bench/RESULTS.md is the curated record (tables with
# their commands, and what they mean), updated by hand from these.
RESULTS = Path(__file__).resolve().parent / "latest-run.md"
STOCK_APP = "bench.stock_celery"


@dataclass
class Bench:
    quick: bool
    workdir: Path
    stack: Stack
    rows: list[Row] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _jr_celery: celery.Celery | None = None

    @property
    def reps(self) -> int:
        return 3 if self.quick else 5

    @property
    def url(self) -> str:
        assert self.stack.redis_server is not None
        return self.stack.redis_server.url

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    # -- processes ------------------------------------------------------------------------

    def spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        env = {**self.stack.env, "BENCH_REDIS_URL": self.url}
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stock_worker(self, pool: str, concurrency: int) -> subprocess.Popen[bytes]:
        # Celery's defaults throughout: prefetch 4, mingle, gossip, heartbeat, events off.
        argv = [
            sys.executable, "-m", "celery", "-A", STOCK_APP, "worker",
            "-P", pool, "-c", str(concurrency), "--loglevel", "WARNING",
            "-n", f"stock-{pool}@bench",
        ]  # fmt: skip
        return self.spawn(argv, f"stock-{pool}-{concurrency}")

    def jobrunner_worker(
        self, pool: str, concurrency: int, solo: bool = False
    ) -> subprocess.Popen[bytes]:
        # The very command line of jobrunner's profiles (worker/profiles.py).
        argv = worker_command(pool, concurrency, f"jr-{pool}@bench", "WARNING")
        if solo:
            argv[argv.index("--pool") + 1] = "solo"
        return self.spawn(argv, f"jr-{pool}-{concurrency}{'-solo' if solo else ''}")

    # -- sending jobs and waiting for them, each side its own way ---------------------------

    def stock_send(self, task: str, args: list[Any], n: int) -> list[str]:
        from bench import stock_celery

        # apply_async on the task, as a user of Celery writes it (and as issue 4 words it).
        stock_task = stock_celery.app.tasks[task]
        return [stock_task.apply_async(args=args).id for _ in range(n)]

    def stock_wait(self, ids: list[str], timeout: float) -> int:
        """Until every result is stored; returns the number of polls (one command each)."""
        client, polls = self.redis(), 0
        names = [f"celery-task-meta-{i}" for i in ids]
        deadline = time.monotonic() + timeout
        while True:
            polls += 1
            if client.exists(*names) >= len(names):
                return polls
            if time.monotonic() > deadline:
                raise TimeoutError("stock jobs did not finish")
            time.sleep(0.01)

    def jr_send(self, workload: str, params: dict[str, Any], pool: str, n: int) -> float:
        """n jobs through submit_jobs (what POST /jobs/batch runs); the first score."""
        store, app = self.store(), self.jr_celery()
        first = time.time()
        for start in range(0, n, 1000):
            specs = [JobSpec(workload, params, pool) for _ in range(min(1000, n - start))]
            submit_jobs(store, app, specs)
        return first

    def jr_wait(self, since: float, n: int, timeout: float) -> int:
        client, polls = self.redis(), 0
        index = keys.job_index("state", "succeeded")
        low = int(since * 1_000_000) - 1
        deadline = time.monotonic() + timeout
        while True:
            polls += 1
            if client.zcount(index, low, "+inf") >= n:
                return polls
            if time.monotonic() > deadline:
                raise TimeoutError("jobrunner jobs did not finish")
            time.sleep(0.01)

    def store(self) -> JobStore:
        return JobStore(redis.Redis.from_url(self.url, decode_responses=True), 86_400)

    def jr_celery(self) -> celery.Celery:
        if self._jr_celery is None:
            self._jr_celery = make_celery(Settings(redis_url=self.url))
        return self._jr_celery

    def commands(self) -> int:
        stats = self.redis().info("commandstats")
        return sum(int(v["calls"]) for v in stats.values())

    # -- one measured run of each side: (jobs/s, Redis commands per job) --------------------

    def run_stock(self, task: str, args: list[Any], n: int, timeout: float) -> tuple[float, float]:
        before = self.commands()
        t0 = time.perf_counter()
        ids = self.stock_send(task, args, n)
        polls = self.stock_wait(ids, timeout)
        elapsed = time.perf_counter() - t0
        used = self.commands() - before - polls - 1  # our polls and INFO are not the job's
        return n / elapsed, used / n

    def run_jr(
        self, workload: str, params: dict[str, Any], pool: str, n: int, timeout: float
    ) -> tuple[float, float]:
        before = self.commands()
        t0 = time.perf_counter()
        since = self.jr_send(workload, params, pool, n)
        polls = self.jr_wait(since, n, timeout)
        elapsed = time.perf_counter() - t0
        used = self.commands() - before - polls - 1
        return n / elapsed, used / n

    def warm(self, pool: str) -> None:
        self.run_stock("stock.noop", [], 20, 120)
        self.run_jr("noop", {}, pool, 20, 120)

    @staticmethod
    def alternate(rep: int, stock: Callable[[], object], jr: Callable[[], object]) -> None:
        for side in (stock, jr) if rep % 2 == 0 else (jr, stock):
            side()


def memory_per_slot(proc: subprocess.Popen[bytes], concurrency: int) -> float:
    """PSS of the worker and its children in MiB per slot: pages prefork children share
    are counted once, not once per child."""
    root = psutil.Process(proc.pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            continue
    return total / concurrency / 2**20


# -- the figures -------------------------------------------------------------------------------


def bench_pools(b: Bench) -> None:
    """No-op enqueue -> stored result per pool, Redis commands per job, memory per slot."""
    n = 1_000 if b.quick else 2_000
    commands = Row("Redis commands per no-op job (all pools)", "<= stock", "cmds")
    for pool in ("threads", "prefork", "gevent"):
        conc = POOLS[pool].concurrency
        row = Row(f"no-op enqueue->stored result, {pool} -c{conc}", ">= 1.3x", "jobs/s")
        memory = Row(f"worker memory per slot, {pool} -c{conc}", "reported", "MiB")
        stock, jr = b.stock_worker(pool, conc), b.jobrunner_worker(pool, conc)
        try:
            b.warm(pool)

            def s(row: Row = row) -> None:
                rate, cmds = b.run_stock("stock.noop", [], n, 300)
                row.stock.append(rate)
                commands.stock.append(cmds)

            def j(row: Row = row, pool: str = pool) -> None:
                rate, cmds = b.run_jr("noop", {}, pool, n, 300)
                row.jobrunner.append(rate)
                commands.jobrunner.append(cmds)

            for rep in range(b.reps):
                b.alternate(rep, s, j)
                print(f"  {row.figure}: stock {row.stock[-1]:.0f}, jr {row.jobrunner[-1]:.0f}")
            memory.stock.append(memory_per_slot(stock, conc))
            memory.jobrunner.append(memory_per_slot(jr, conc))
        finally:
            b.stop(stock)
            b.stop(jr)
        b.rows += [row, memory]
    b.rows.append(commands)


def bench_sleep(b: Bench) -> None:
    """gevent -c500, 2,000 x sleep(0.1): makespan from first send to last stored result."""
    row = Row("gevent -c500, 2,000 x sleep(0.1)", ">= 3x", "jobs/s")
    n = 2_000
    stock, jr = b.stock_worker("gevent", 500), b.jobrunner_worker("gevent", 500)
    try:
        b.warm("gevent")
        for rep in range(b.reps):
            b.alternate(
                rep,
                lambda: row.stock.append(b.run_stock("stock.sleep", [0.1], n, 300)[0]),
                lambda: row.jobrunner.append(
                    b.run_jr("sleep", {"seconds": 0.1}, "gevent", n, 300)[0]
                ),
            )
            print(f"  {row.figure}: stock {row.stock[-1]:.0f}, jr {row.jobrunner[-1]:.0f}")
    finally:
        b.stop(stock)
        b.stop(jr)
    b.rows.insert(0, row)


def bench_batch(b: Bench) -> None:
    """POST /jobs/batch (1,000 per request) against a loop of stock apply_async."""
    row = Row("POST /jobs/batch (1,000/request) vs apply_async loop", ">= 10x", "jobs/s")
    per_run = 5 if b.quick else 10
    # Serialized once, as a client sending a prepared file would (jobrunner submit --batch).
    body = json.dumps({"jobs": [{"workload": "noop", "params": {}, "pool": "threads"}] * 1000})
    http, url = b.stack.http, f"{b.stack.url}/jobs/batch"
    headers = {"Content-Type": "application/json"}

    def jr() -> None:
        t0 = time.perf_counter()
        for _ in range(per_run):
            response = http.post(url, data=body, headers=headers, timeout=60)
            assert response.status_code == 202, response.text[:300]
        row.jobrunner.append(per_run * 1000 / (time.perf_counter() - t0))

    # Each API process builds its message templates and loads its script on first use.
    for _ in range(4):
        http.post(url, data=body, headers=headers, timeout=60)

    def stock() -> None:
        t0 = time.perf_counter()
        b.stock_send("stock.noop", [], 1000 * per_run)
        row.stock.append(per_run * 1000 / (time.perf_counter() - t0))

    for rep in range(b.reps):
        b.alternate(rep, stock, jr)
        print(f"  {row.figure}: stock {row.stock[-1]:.0f}, jr {row.jobrunner[-1]:.0f}")
    # Nobody consumes these queues here; drop the messages so later figures start empty.
    b.redis().delete("stock", POOLS["threads"].queue)
    b.rows.append(row)


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
    os.environ["FLOWER_UNAUTHENTICATED_API"] = "true"
    flower = b.spawn(
        [sys.executable, "-m", "celery", "-A", STOCK_APP, "flower",
         f"--port={port}", "--address=127.0.0.1"],
        "flower",
    )  # fmt: skip
    seconds = 5 if b.quick else 10
    flower_url = f"http://127.0.0.1:{port}/api/task/async-apply/stock.noop"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.post(flower_url, json={"args": []}, timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"flower did not start; see {b.workdir}/flower.log")
            time.sleep(0.3)
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
    # The standard library's client on one kept-alive connection: requests adds about
    # 0.45 ms of its own to every call here, which is the client's time, not jobrunner's.
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


def bench_cpu(b: Bench) -> None:
    """cpu_hash on jobrunner's prefork -c2 against the same worker with -P solo."""
    row = Row("cpu_hash, prefork -c2 vs solo", ">= 1.8x", "jobs/s")
    n = 16 if b.quick else 32
    # ~0.1 s of CPU a job: long enough that what is measured is the work spread over the
    # cores, not the dispatch of each message (a few ms on these shared cores).
    params = {"rounds": 300_000}
    # Two more repetitions than the other figures: a neighbour on the host that takes
    # part of one core for a moment costs two busy processes more than one, so single
    # runs of this ratio move by 15 %.
    for rep in range(b.reps + 2):
        for solo in (False, True) if rep % 2 == 0 else (True, False):
            worker = b.jobrunner_worker("prefork", 1 if solo else 2, solo=solo)
            try:
                b.run_jr("noop", {}, "prefork", 5, 120)  # started and consuming
                rate = b.run_jr("cpu_hash", params, "prefork", n, 300)[0]
            finally:
                b.stop(worker)
            (row.stock if solo else row.jobrunner).append(rate)
        print(f"  {row.figure}: solo {row.stock[-1]:.1f}, -c2 {row.jobrunner[-1]:.1f}")
    row.note = "'stock' column = the same jobrunner worker with -P solo"
    b.rows.append(row)


def bench_listing(b: Bench) -> None:
    """GET /jobs?limit=50 with 1,000 stored jobs, then with 100,000."""
    row = Row("GET /jobs?limit=50: 100,000 stored vs 1,000", "<= 1.5x", "ms")
    client = b.redis()
    for name in client.scan_iter(match=f"{keys.job_index()}*", count=10_000):
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


STEPS: dict[str, Callable[[Bench], None]] = {
    "sleep": bench_sleep,
    "pools": bench_pools,
    "batch": bench_batch,
    "http": bench_http_post,
    "latency": bench_latency,
    "cpu": bench_cpu,
    "listing": bench_listing,
}


# -- report ------------------------------------------------------------------------------------


def machine(url: str) -> str:
    server = redis.Redis.from_url(url).info("server")["redis_version"]
    return (
        f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
        f"Redis {server}, Celery {celery.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.side_by_side", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer jobs and repetitions")
    parser.add_argument("--only", default="", help=f"comma separated, of: {','.join(STEPS)}")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown table goes here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="jobrunner-bench-"))
    # No per-key rate limit: the bench measures the API, not the limiter's refusals.
    stack = Stack(workdir, env_overrides={"API_RATE_LIMIT": "0"})
    b = Bench(args.quick, workdir, stack)
    started, load = time.monotonic(), os.getloadavg()[0]
    try:
        # Redis as compose runs it (append-only, fsync every second), not as the tests
        # run it (fsync always, so a kill -9 of Redis loses nothing they check).
        stack.start_redis(fsync="everysec")
        # bench.stock_celery reads its broker URL when first imported, here too.
        os.environ["BENCH_REDIS_URL"] = b.url
        stack.start_api()
        stack.wait_ready()
        about = machine(b.url)
        print(about, f"load average {load:.2f}", f"logs in {workdir}")
        for name in [s for s in args.only.split(",") if s] or list(STEPS):
            print(f"== {name}")
            try:
                STEPS[name](b)
            except Exception as exc:  # one broken figure must not lose the others
                print(f"  {name} failed: {exc!r}; logs in {workdir}")
                b.rows.append(Row(name, "-", "-", note=f"not measured: {type(exc).__name__}"))
    finally:
        for proc in list(b.procs):
            b.stop(proc)
        stack.stop()
    command = ".venv/bin/python -m bench.side_by_side" + (" --quick" if args.quick else "")
    command += f" --only {args.only}" if args.only else ""
    report = table(b.rows)
    print(report)
    minutes = (time.monotonic() - started) / 60
    drawn = chart(b.rows, args.results.with_suffix(".png"), f"{command}\n{about}")
    picture = f"\n![jobrunner / stock against each target]({drawn.name})\n" if drawn else ""
    args.results.write_text(
        f"# Side-by-side benchmark\n\nCommand: `{command}` ({minutes:.1f} min). "
        f"Machine: {about}. Load average (1 min) at start: {load:.2f}; the 2 cores are "
        "shared with other sessions running tests, so single runs move by 10-30 %: the "
        "table shows medians of alternating repetitions.\n\n" + report + "\n" + picture
    )
    print(f"table: {args.results}" + (f", chart: {drawn}" if drawn else ""))


if __name__ == "__main__":
    main()
