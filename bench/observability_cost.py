"""What observability costs (docs/observability.md, "What it costs").

    .venv/bin/python -m bench.observability_cost                    # all three, ~5 minutes
    .venv/bin/python -m bench.observability_cost --only redis,events

- redis: the Redis side of the metrics transition.lua counts, on a private Redis: the
  shipped script against the same script with its counting turned off, per job (a
  claim and an outcome): Redis CPU, commands, and the client's time for the two calls.
- events: a worker's no-op jobs/s with JOB_TASK_EVENTS off and on (Celery's task events
  for Flower), in the same run, alternating.
- throughput: no-op jobs/s of this checkout, events off: run it on a checkout before
  and after a change (the metrics' end-to-end cost was measured this way).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from bench.harness import Bench, BenchStack
from services.core.ids import new_uuid4
from services.core.vocabulary import JobState
from services.devstack.redis_server import RedisServer
from services.jobs import store as store_module
from services.jobs.record import JobRecord
from services.jobs.store import JobStore

# transition.lua with its counting turned off: every count() returns at once.
COUNTING = "local function count(kind, middle, by)\n"
NOT_COUNTING = COUNTING + "  if true then return end\n"


def redis_cost(jobs: int, reps: int) -> None:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="jobrunner-obs-cost-"))).start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        shipped = store_module.TRANSITION_SCRIPT
        assert COUNTING in shipped, "transition.lua's count() moved: update this bench"
        scripts = {"counting": shipped, "not counting": shipped.replace(COUNTING, NOT_COUNTING)}
        figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in scripts}
        for rep in range(reps):
            order = list(scripts) if rep % 2 == 0 else list(reversed(scripts))
            for name in order:
                store_module.TRANSITION_SCRIPT = scripts[name]
                try:
                    figures[name].append(claim_and_finish(JobStore(client, 3600), jobs))
                finally:
                    store_module.TRANSITION_SCRIPT = shipped
        print(f"redis: {jobs} jobs, a claim and an outcome each, medians of {reps}")
        for name, rows in figures.items():
            usec, calls, wall = (statistics.median(column) for column in zip(*rows, strict=True))
            print(
                f"  {name:>13}: {usec:6.1f} us of Redis CPU per job, "
                f"{calls:5.1f} commands per job, {wall * 1e6:6.0f} us per job at the client"
            )
    finally:
        server.stop()


def claim_and_finish(store: JobStore, jobs: int) -> tuple[float, float, float]:
    """(Redis CPU microseconds, commands, client seconds) per job, for `jobs` jobs claimed
    and finished one at a time, as a prefork pool process does."""
    client = store.redis
    client.flushall()
    spec = {"workload": "noop", "params": {}, "pool": "threads", "pool_chosen_by": "client"}
    records = [
        JobRecord(id=new_uuid4(), state=JobState.queued, submitted_at=time.time(), **spec)
        for _ in range(jobs)
    ]
    for start in range(0, jobs, 1_000):
        store.create_many(records[start : start + 1_000])
    store.transition(records[0].id, {JobState.queued}, JobState.queued)  # loads the script
    client.config_resetstat()
    cpu_before = redis_cpu_seconds(client)
    started = time.perf_counter()
    for record in records:
        claimed = store.transition(
            record.id, {JobState.queued}, JobState.running, count_attempt=True,
            return_record=True, lease_seconds=30, fields={"started_at": time.time()},
        )  # fmt: skip
        assert claimed is not None and claimed.moved
        store.transition(
            record.id, {JobState.running}, JobState.succeeded,
            fields={"finished_at": time.time()}, fence=1,
        )  # fmt: skip
    wall = time.perf_counter() - started
    cpu = redis_cpu_seconds(client) - cpu_before
    calls = sum(int(v["calls"]) for v in client.info("commandstats").values())
    return cpu * 1e6 / jobs, calls / jobs, wall / jobs


def redis_cpu_seconds(client: redis.Redis) -> float:
    """CPU time the Redis server has used (its getrusage): unlike a command's `usec`, which
    is wall time, not inflated when a busy machine preempts it."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def noop_rate(
    b: Bench, pool: str, concurrency: int, jobs: int, events: str
) -> Callable[[], tuple[float, float]]:
    """A run of `jobs` no-ops on a fresh worker of `pool`, with JOB_TASK_EVENTS=`events`:
    (jobs/s, Redis commands per job)."""

    def run() -> tuple[float, float]:
        b.stack.overrides["JOB_TASK_EVENTS"] = events
        worker = b.jobrunner_worker(pool, concurrency)
        try:
            b.run_jr("noop", {}, pool, 50, 120)  # ready, scripts and templates loaded
            return b.run_jr("noop", {}, pool, jobs, 600)
        finally:
            b.stop(worker)

    return run


def compare(b: Bench, pool: str, concurrency: int, jobs: int, reps: int) -> None:
    runs = {events: noop_rate(b, pool, concurrency, jobs, events) for events in ("off", "on")}
    rates: dict[str, list[float]] = {events: [] for events in runs}
    for rep in range(reps):
        for events in list(runs) if rep % 2 == 0 else list(reversed(runs)):
            rates[events].append(runs[events]()[0])
    off, on = (statistics.median(rates[events]) for events in ("off", "on"))
    print(
        f"events: {pool} -c{concurrency}, {jobs} no-ops, medians of {reps}: off {off:.0f} "
        f"jobs/s, on {on:.0f} jobs/s, on/off {on / off:.2f} "
        f"(off {[round(r) for r in rates['off']]}, on {[round(r) for r in rates['on']]})"
    )


def throughput(b: Bench, pool: str, concurrency: int, jobs: int, reps: int) -> None:
    rows = [noop_rate(b, pool, concurrency, jobs, "off")() for _ in range(reps)]
    rate = statistics.median(r[0] for r in rows)
    commands = statistics.median(r[1] for r in rows)
    print(
        f"throughput: {pool} -c{concurrency}, {jobs} no-ops, median of {reps}: {rate:.0f} "
        f"jobs/s, {commands:.1f} Redis commands per job ({[round(r[0]) for r in rows]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.observability_cost", description=__doc__)
    parser.add_argument("--only", default="redis,events,throughput")
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    steps = set(args.only.split(","))
    if "redis" in steps:
        redis_cost(args.jobs, args.reps)
    if not steps & {"events", "throughput"}:
        return
    workdir = Path(tempfile.mkdtemp(prefix="jobrunner-obs-cost-"))
    stack = BenchStack(workdir)
    b = Bench(quick=True, workdir=workdir, stack=stack)
    try:
        stack.start_redis(fsync="everysec")
        for pool, concurrency in (("threads", 8), ("prefork", 2)):
            if "events" in steps:
                compare(b, pool, concurrency, args.jobs, args.reps)
            if "throughput" in steps:
                throughput(b, pool, concurrency, args.jobs, args.reps)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
