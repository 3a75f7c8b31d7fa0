"""One pool, one workload, sent in bulk or one by one: how close a worker comes to its
ideal, and where the rest goes. The tool behind the before/after figures of issue 13's changes
(bench/RESULTS.md), for a change to a worker's hot path measured in minutes rather than
with the whole `make bench`.

    .venv/bin/python -m bench.pool_run --pool gevent --concurrency 100 --jobs 2000 \\
        --workload sleep --reps 3
    .venv/bin/python -m bench.pool_run --pool threads --concurrency 100 --workload noop
    .venv/bin/python -m bench.pool_run --pool gevent --workload noop --one-by-one --by-command

A stack of its own (Redis as compose runs it, the API, one worker logging warnings only
unless `--loglevel` says otherwise, as the bench runs workers); each repetition sends the
jobs through `POST /jobs/batch` (`--one-by-one`: a `POST /jobs` a job, with requests),
waits for the last, and reads every record back. (Its HTTP session is plain requests,
which reads the environment on every call, unlike jobrunner's client: a share of a
one-by-one run's sending is that.) It
prints, per repetition:

- jobs/s from the first submission to the last finish, and for `sleep` the share of the
  ideal (concurrency / seconds);
- the worker's CPU per job (its process tree's user + system seconds over the run);
- the median time a job's run took beyond the workload itself (the claim, scheduling);
- the median refill gap: how long a freed slot stayed empty (the n-th job to start after
  the first `concurrency` took the slot of the n-th to finish);
- Redis commands per job, as `INFO commandstats` counts them (inside scripts one by one),
  from the first submission to the last acknowledgement, less this tool's own polls
  (`--by-command`: by name);
- how long after the first submission the first job started, and how long the
  submissions themselves took (the API accepting each request): time in the span that no
  worker can use.

and after the last, the worker's memory per slot: the PSS of its processes (pages prefork
pool processes share counted once), as `make bench` reports it.

Printed, never asserted: these machines are shared; compare medians of alternating runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import redis

from bench.harness import BenchStack, memory_per_slot
from bench.peers.driver import command_counts
from bench.peers.runner import tree_cpu_seconds
from services.core import redis_keys
from services.core.redis_clients import redis_client
from services.devstack.probes import pool_workers_probe
from services.devstack.scratch import scratch_folder

SLEEP_SECONDS = 0.1
BATCH = 1_000
# Acknowledgements are deleted in Redis a moment after the job ends (services/broker/qos.py).
ACK_SETTLE = 0.2


@dataclass
class PoolRun:
    jobs_per_second: float
    share_of_ideal: float | None
    worker_cpu_ms: float
    run_overhead_ms: float
    refill_gap_ms: float
    redis_commands: float
    # Where the span goes besides the jobs' own time: from the first submission to the
    # first start, and the submissions' own span (the API accepting every request).
    first_start_ms: float = 0.0
    submitting_ms: float = 0.0
    by_command: dict[str, float] | None = None

    def line(self) -> str:
        share = f", {self.share_of_ideal:.0%} of ideal" if self.share_of_ideal else ""
        return (
            f"{self.jobs_per_second:,.0f} jobs/s{share}, worker CPU {self.worker_cpu_ms:.2f} "
            f"ms/job, run beyond the workload {self.run_overhead_ms:.1f} ms, refill gap "
            f"{self.refill_gap_ms:.1f} ms, {self.redis_commands:.1f} Redis commands/job, "
            f"first start {self.first_start_ms:.0f} ms after the first submission, "
            f"submissions span {self.submitting_ms:.0f} ms"
        )


def job(workload: str, pool: str) -> dict:
    params = {"seconds": SLEEP_SECONDS} if workload == "sleep" else {"value": 1}
    return {"workload": workload, "params": params, "pool": pool}


def one_run(
    stack: BenchStack, client: redis.Redis, worker_pid: int, args: argparse.Namespace
) -> PoolRun:
    before = succeeded(client)
    commands_before = command_counts(client)
    cpu_before = tree_cpu_seconds(worker_pid)
    ids: list[str] = []
    if args.one_by_one:
        for _ in range(args.jobs):
            body = job(args.workload, args.pool)
            answer = stack.http.post(f"{stack.url}/jobs", json=body, timeout=60)
            answer.raise_for_status()
            ids.append(answer.json()["id"])
    else:
        for start in range(0, args.jobs, BATCH):
            jobs = [job(args.workload, args.pool)] * min(BATCH, args.jobs - start)
            answer = stack.http.post(f"{stack.url}/jobs/batch", json={"jobs": jobs}, timeout=60)
            answer.raise_for_status()
            ids += [record["id"] for record in answer.json()["jobs"]]
    wait_succeeded(client, before, len(ids))
    cpu = tree_cpu_seconds(worker_pid) - cpu_before
    time.sleep(ACK_SETTLE)  # the last acknowledgements' deletions, sent a moment later
    ran = commands_used(commands_before, command_counts(client))
    records = read_records(stack, ids)
    first = min(r["submitted_at"] for r in records)
    span = max(r["finished_at"] for r in records) - first
    starts = sorted(r["started_at"] for r in records)
    ends = sorted(r["finished_at"] for r in records)
    slots = args.concurrency
    gaps = [starts[n] - ends[n - slots] for n in range(slots, len(starts))] or [0.0]
    workload_seconds = SLEEP_SECONDS if args.workload == "sleep" else 0.0
    runs = [r["finished_at"] - r["started_at"] - workload_seconds for r in records]
    ideal = slots / SLEEP_SECONDS if args.workload == "sleep" else None
    rate = len(records) / span
    return PoolRun(
        rate, rate / ideal if ideal else None, cpu / len(records) * 1000,
        statistics.median(runs) * 1000, statistics.median(gaps) * 1000,
        sum(ran.values()) / len(records), (starts[0] - first) * 1000,
        (max(r["submitted_at"] for r in records) - first) * 1000,
        {name: n / len(records) for name, n in ran.items()},
    )  # fmt: skip


def commands_used(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands Redis ran between two `INFO commandstats` readings, by name (those inside
    scripts one by one, as Redis counts them), less this tool's own ZCARD polls and INFO
    calls."""
    used = {name: n - before.get(name, 0) for name, n in after.items()}
    return {name: n for name, n in used.items() if n and name not in ("zcard", "info")}


def succeeded(client: redis.Redis) -> int:
    """Jobs in the succeeded index: one ZCARD, so waiting costs the worker nothing."""
    return int(client.zcard(redis_keys.job_index("state", "succeeded")))


def wait_succeeded(client: redis.Redis, before: int, jobs: int, timeout: float = 600.0) -> None:
    """Until the succeeded index grew by `jobs`."""
    deadline = time.monotonic() + timeout
    while succeeded(client) < before + jobs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{succeeded(client) - before} of {jobs} jobs succeeded")
        time.sleep(0.05)


def read_records(stack: BenchStack, ids: list[str]) -> list[dict]:
    """Every record of `ids`, read a page at a time, newest first."""
    wanted, records, cursor = set(ids), {}, None
    while len(records) < len(wanted):
        params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = stack.http.get(f"{stack.url}/jobs", params=params, timeout=60).json()
        records.update({r["id"]: r for r in page["jobs"] if r["id"] in wanted})
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return [records[i] for i in ids]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default="gevent", choices=["threads", "prefork", "gevent"])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--workload", default="sleep", choices=["sleep", "noop"])
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--loglevel", default="WARNING", help="the worker's WORKER_LOGLEVEL (make run: INFO)"
    )
    parser.add_argument(
        "--one-by-one", action="store_true", help="a POST /jobs a job instead of batches"
    )
    parser.add_argument(
        "--by-command", action="store_true", help="also print Redis commands per job by name"
    )
    args = parser.parse_args(argv)
    # A run that worked leaves nothing behind; one that failed keeps its logs, and says where.
    with scratch_folder("jobrunner-pool-run-") as workdir:
        stack = BenchStack(workdir)
        stack.overrides["WORKER_LOGLEVEL"] = args.loglevel
        try:
            stack.start_redis(fsync="everysec")
            stack.start_api(host="127.0.0.1", port=stack.api_port)
            stack.wait_api_ready()
            managed = stack.start_worker(args.pool, args.concurrency)
            key = stack.http.headers["Authorization"].removeprefix("Bearer ")
            stack.wait_workers_ready(pool_workers_probe(stack.url, key))
            assert stack.redis_server is not None
            client = redis_client(stack.redis_server.url)
            runs = []
            for rep in range(args.reps):
                runs.append(one_run(stack, client, managed.pid, args))
                print(f"rep {rep}: {runs[-1].line()}", flush=True)
                if args.by_command:
                    shown = sorted((runs[-1].by_command or {}).items(), key=lambda kv: -kv[1])
                    print("  " + ", ".join(f"{name} {n:.2f}" for name, n in shown), flush=True)
            memory = memory_per_slot(managed, args.concurrency)
        finally:
            stack.stop()
    median = PoolRun(*(statistics.median(getattr(r, f) or 0 for r in runs) for f in (
        "jobs_per_second", "share_of_ideal", "worker_cpu_ms", "run_overhead_ms",
        "refill_gap_ms", "redis_commands", "first_start_ms", "submitting_ms",
    )))  # fmt: skip
    print(f"{args.pool} -c{args.concurrency}, {args.jobs:,} x {args.workload}, medians of "
          f"{args.reps}: {median.line()}")  # fmt: skip
    print(f"worker memory after the runs: {memory:.2f} MiB per slot (PSS)")


if __name__ == "__main__":
    main()
