"""`make bench`: jobrunner against stock Celery on this machine, in the same run.

For each figure both sides run on the same Redis, alternating, `--repeat` times; the
table gives medians and the ratio jobrunner / stock. Figures this script does not
measure yet are listed as such (see bench/RESULTS.md and issue #4).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from services import keys
from services.broker import make_celery
from services.jobs import FINAL_STATES, JobStore
from services.redis_server import RedisServer
from services.settings import Settings
from services.submission import JobSpec, submit_job, submit_jobs

POOL_CONCURRENCY = {"threads": 8, "prefork": 2, "gevent": 100}


class Workers:
    """Worker processes of one side, started and stopped around a figure."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env, self.folder, self.processes = env, folder, []

    def stock(self, pool: str, concurrency: int) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "bench.stock_app", "worker",
                "-P", pool, "-c", str(concurrency), "-Q", f"stock.{pool}",
                "-n", f"stock-{pool}@%h", "-l", "WARNING"]  # fmt: skip
        self._start(argv)

    def jobrunner(self, pool: str, concurrency: int) -> None:
        argv = [sys.executable, "-m", "worker", "--pool", pool, "--concurrency",
                str(concurrency), "--name", f"jr-{pool}@%h", "--loglevel", "WARNING"]  # fmt: skip
        self._start(argv)

    def _start(self, argv: list[str]) -> None:
        log = (self.folder / f"worker-{len(self.processes)}.log").open("ab")
        self.processes.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=log))
        time.sleep(4)  # started and connected; a figure is timed from its first send

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=60)
        self.processes = []


def redis_commands(client: redis.Redis) -> int:
    return sum(v["calls"] for v in client.info("commandstats").values())


def stock_noop(app, pool: str, count: int) -> float:
    started = time.perf_counter()
    results = [app.send_task("stock.noop", args=[i], queue=f"stock.{pool}") for i in range(count)]
    for result in results:
        result.get(timeout=120)
    return count / (time.perf_counter() - started)


def jobrunner_noop(store: JobStore, celery, pool: str, count: int) -> tuple[float, int]:
    """Jobs/s, and the Redis commands this client spent polling (to leave out)."""
    started = time.perf_counter()
    spec = JobSpec(workload="noop", params={}, pool=pool)
    ids = [submit_job(store, celery, spec).id for _ in range(count)]
    polled = wait_final(store, ids)
    return count / (time.perf_counter() - started), polled


def wait_final(store: JobStore, ids: list[str]) -> int:
    """Until every job is final; how many commands the polling took."""
    pending, polled = list(ids), 0
    while pending:
        time.sleep(0.02)
        pipe = store.redis.pipeline(transaction=False)
        for job_id in pending:
            pipe.hget(keys.job(job_id), "state")
        polled += len(pending)
        pending = [i for i, s in zip(pending, pipe.execute(), strict=True) if s not in FINAL_STATES]
    return polled


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--count", type=int, default=1_000, help="jobs per no-op run")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="jobrunner-bench-"))
    server = RedisServer(folder / "redis", fsync="everysec").start()
    env = {**os.environ, "REDIS_URL": server.url, "PYTHONPATH": str(Path.cwd())}
    os.environ["REDIS_URL"] = server.url
    settings = Settings(redis_url=server.url)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    store = JobStore(client, 3_600)
    celery = make_celery(settings)
    from bench.stock_app import app as stock

    rows: list[tuple[str, float, float]] = []
    try:
        for pool, concurrency in POOL_CONCURRENCY.items():
            workers = Workers(env, folder)
            workers.stock(pool, concurrency)
            workers.jobrunner(pool, concurrency)
            stock_rate, ours_rate, stock_cmds, ours_cmds = [], [], [], []
            for _ in range(args.repeat):  # alternating, so drift hits both sides alike
                before = redis_commands(client)
                stock_rate.append(stock_noop(stock, pool, args.count))
                stock_cmds.append((redis_commands(client) - before) / args.count)
                before = redis_commands(client)
                rate, polled = jobrunner_noop(store, celery, pool, args.count)
                ours_rate.append(rate)
                ours_cmds.append((redis_commands(client) - before - polled) / args.count)
            workers.stop()
            rows.append((f"no-op enqueue -> result, {pool} -c{concurrency}: jobs/s",
                         statistics.median(stock_rate), statistics.median(ours_rate)))  # fmt: skip
            # Stock's count includes fetching its results; ours leaves out our polling.
            rows.append((f"Redis commands per no-op job, {pool} (lower is better)",
                         statistics.median(stock_cmds), statistics.median(ours_cmds)))  # fmt: skip

        # Accepting many jobs at once: a loop of apply_async against submit_jobs, the
        # function behind POST /jobs/batch (1,000 per call). No workers: acceptance only.
        def stock_accept() -> float:
            started = time.perf_counter()
            for i in range(args.count):
                stock.send_task("stock.noop", args=[i], queue="stock.idle")
            return args.count / (time.perf_counter() - started)

        def ours_accept() -> float:
            spec = JobSpec(workload="noop", params={}, pool="threads")
            started = time.perf_counter()
            submit_jobs(store, celery, [spec] * args.count)
            return args.count / (time.perf_counter() - started)

        stock_acc, ours_acc = [], []
        for _ in range(args.repeat):
            stock_acc.append(stock_accept())
            ours_acc.append(ours_accept())
        rows.append(("jobs accepted/s: apply_async loop vs batch of 1,000 (no HTTP)",
                     statistics.median(stock_acc), statistics.median(ours_acc)))  # fmt: skip
    finally:
        server.stop()

    print(f"\n{'figure':<66} {'stock':>10} {'jobrunner':>10} {'ratio':>7}")
    for name, stock_value, ours_value in rows:
        ratio = ours_value / stock_value if stock_value else float("nan")
        print(f"{name:<66} {stock_value:>10.1f} {ours_value:>10.1f} {ratio:>6.2f}x")
    print(f"\nmedians of {args.repeat} alternating runs of {args.count} jobs; logs in {folder}")


if __name__ == "__main__":
    main()
