"""The bench's harness: a jobrunner stack from the launcher, stock Celery beside it, and one
measured run of each side (jobs/s and Redis commands per job)."""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celery
import psutil
import redis
import requests

from bench.report import Row
from services.broker.celery_app import make_celery
from services.core import redis_keys
from services.core.api_keys import hash_key, new_key
from services.core.redis_clients import redis_client
from services.core.settings import Settings
from services.devstack.launcher import Launcher
from services.devstack.processes import ManagedProcess
from services.devstack.redis_server import free_port
from services.jobs.store import JobStore
from services.jobs.submission import JobSpec, submit_job, submit_jobs
from worker.profiles import worker_command

STOCK_APP = "bench.stock_celery"

# Jobs a bulk call carries: the most POST /jobs/batch takes in a request, and as many in
# each of stock's pipelines.
BULK = 1_000


class Enqueue(enum.Enum):
    """How a measured run sends its jobs: the value names the row it fills."""

    one_by_one = "one by one"  # one job a call on each side
    bulk = "bulk"  # each side's bulk path, BULK jobs a call


def send_stock(task: celery.Task, args: list[Any], n: int, enqueue: Enqueue) -> list[str]:
    """n calls of a stock Celery task, sent as a Celery user sends them; their task ids."""
    if enqueue is Enqueue.one_by_one:
        # apply_async on the task, as a user of Celery writes it (and as issue 4 words it).
        return [task.apply_async(args=args).id for _ in range(n)]
    # Stock's bulk path, chosen from the source of Celery 5.7 and kombu 5.7:
    # - group(...).apply_async() is Celery's own way to send many tasks at once, but all it
    #   shares is the producer (celery/canvas.py, group._apply_tasks): each task is still an
    #   apply_async of its own, and kombu's Redis channel an LPUSH round trip of its own
    #   (kombu/transport/redis.py, Channel._put).
    # - kombu 5.7's public Producer.batch() (celery/kombu#2572) holds those LPUSHes back and
    #   sends them in one pipeline per BULK commands; apply_async takes the producer to send
    #   with. Sending only, 5,000 no-ops, no workers, medians of 5 on this machine: a loop of
    #   apply_async 1.9k jobs/s, a group 2.0k, a group inside Producer.batch() 2.9k, a loop
    #   of apply_async on one producer inside it 4.6k (a group also clones and freezes every
    #   signature and builds a GroupResult). Stock gets that quickest one, so the bulk row
    #   compares best with best, through public APIs only.
    # - task.chunks(...) is no enqueue path: it packs many calls into one message, so one
    #   task and one stored result per chunk, which would run other jobs than jobrunner's.
    ids: list[str] = []
    for start in range(0, n, BULK):
        with task.app.producer_or_acquire() as producer, producer.batch(max_size=BULK):
            ids += [
                task.apply_async(args=args, producer=producer).id
                for _ in range(min(BULK, n - start))
            ]
    return ids


def send_jobrunner(
    store: JobStore, app: celery.Celery, spec: JobSpec, n: int, enqueue: Enqueue
) -> None:
    """n jobs of `spec`, through the function an HTTP request would run."""
    if enqueue is Enqueue.one_by_one:
        for _ in range(n):
            submit_job(store, app, spec)  # what POST /jobs runs
        return
    for start in range(0, n, BULK):
        submit_jobs(store, app, [spec] * min(BULK, n - start))  # what POST /jobs/batch runs


class BenchStack(Launcher):
    """The launcher's stack with an admin key of its own, and a session that sends it."""

    def __init__(self, workdir: Path) -> None:
        key = new_key()
        # No per-key rate limit: the bench measures the API, not the limiter's refusals.
        overrides = {
            "API_RATE_LIMIT": "0", "JOBRUNNER_API_KEYS": f"bench:read+submit+admin:{hash_key(key)}",
        }  # fmt: skip
        super().__init__(workdir, overrides=overrides)
        self.api_port = free_port()
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {key}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass
class Bench:
    quick: bool
    workdir: Path
    stack: BenchStack
    rows: list[Row] = field(default_factory=list)
    _jr_celery: celery.Celery | None = None

    @property
    def reps(self) -> int:
        return 3 if self.quick else 5

    @property
    def url(self) -> str:
        assert self.stack.redis_server is not None
        return self.stack.redis_server.url

    def redis(self) -> redis.Redis:
        return redis_client(self.url)

    # -- processes ------------------------------------------------------------------------

    def spawn(self, argv: list[str], name: str) -> ManagedProcess:
        return self.stack.start_program(name, argv)

    def stop(self, proc: ManagedProcess) -> None:
        self.stack.stop_process(proc, grace=15)

    def stock_worker(self, pool: str, concurrency: int) -> ManagedProcess:
        # Celery's defaults throughout: prefetch 4, mingle, gossip, heartbeat, events off.
        argv = [
            sys.executable, "-m", "celery", "-A", STOCK_APP, "worker",
            "-P", pool, "-c", str(concurrency), "--loglevel", "WARNING",
            "-n", f"stock-{pool}@bench",
        ]  # fmt: skip
        return self.spawn(argv, f"stock-{pool}-{concurrency}")

    def jobrunner_worker(self, pool: str, concurrency: int, solo: bool = False) -> ManagedProcess:
        # The very command line of jobrunner's profiles (worker/profiles.py).
        argv = worker_command(pool, concurrency, f"jr-{pool}@bench", "WARNING")
        if solo:
            argv[argv.index("--pool") + 1] = "solo"
        return self.spawn(argv, f"jr-{pool}-{concurrency}{'-solo' if solo else ''}")

    # -- sending jobs and waiting for them, each side its own way ---------------------------

    # Unless a figure says otherwise, each side is sent its own way, as before issue 14:
    # stock one job a call, jobrunner in bulk. Figures about the enqueue path say which.

    def stock_send(
        self, task: str, args: list[Any], n: int, enqueue: Enqueue = Enqueue.one_by_one
    ) -> list[str]:
        # Imported here: it reads its broker URL (BENCH_REDIS_URL) when first imported.
        from bench import stock_celery

        return send_stock(stock_celery.app.tasks[task], args, n, enqueue)

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

    def jr_send(
        self,
        workload: str,
        params: dict[str, Any],
        pool: str,
        n: int,
        enqueue: Enqueue = Enqueue.bulk,
    ) -> float:
        """n jobs through submit_job or submit_jobs; the first index score to count from."""
        store, app = self.store(), self.jr_celery()
        first = time.time()
        send_jobrunner(store, app, JobSpec(workload, params, pool), n, enqueue)
        return first

    def jr_wait(self, since: float, n: int, timeout: float) -> int:
        client, polls = self.redis(), 0
        index = redis_keys.job_index("state", "succeeded")
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
        return JobStore(redis_client(self.url), 86_400)

    def jr_celery(self) -> celery.Celery:
        if self._jr_celery is None:
            self._jr_celery = make_celery(Settings(redis_url=self.url))
        return self._jr_celery

    def commands(self) -> int:
        stats = self.redis().info("commandstats")
        return sum(int(v["calls"]) for v in stats.values())

    # -- one measured run of each side: (jobs/s, Redis commands per job) --------------------

    def run_stock(
        self,
        task: str,
        args: list[Any],
        n: int,
        timeout: float,
        enqueue: Enqueue = Enqueue.one_by_one,
    ) -> tuple[float, float]:
        before = self.commands()
        t0 = time.perf_counter()
        ids = self.stock_send(task, args, n, enqueue)
        polls = self.stock_wait(ids, timeout)
        elapsed = time.perf_counter() - t0
        used = self.commands() - before - polls - 1  # our polls and INFO are not the job's
        return n / elapsed, used / n

    def run_jr(
        self,
        workload: str,
        params: dict[str, Any],
        pool: str,
        n: int,
        timeout: float,
        enqueue: Enqueue = Enqueue.bulk,
    ) -> tuple[float, float]:
        before = self.commands()
        t0 = time.perf_counter()
        since = self.jr_send(workload, params, pool, n, enqueue)
        polls = self.jr_wait(since, n, timeout)
        elapsed = time.perf_counter() - t0
        used = self.commands() - before - polls - 1
        return n / elapsed, used / n

    def warm(self, pool: str) -> None:
        for enqueue in Enqueue:  # each path's first call loads scripts and templates
            self.run_stock("stock.noop", [], 20, 120, enqueue)
            self.run_jr("noop", {}, pool, 20, 120, enqueue)

    @staticmethod
    def alternate(rep: int, stock: Callable[[], object], jr: Callable[[], object]) -> None:
        for side in (stock, jr) if rep % 2 == 0 else (jr, stock):
            side()


def memory_per_slot(proc: ManagedProcess, concurrency: int) -> float:
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
