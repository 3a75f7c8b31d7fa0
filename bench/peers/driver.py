"""What every peer's producer shares: the conversation with the bench, the timing, the
wait for the last result and the check of every result through the library's own store.

A producer is a long-lived process, started once per system with that system's
interpreter (it imports only the standard library and redis-py beside its own library):

    bench -> producer   {"workload": "noop", "n": 5000, "mode": "one", ...}   one line
    producer -> bench   @@bench {"event": "done", "elapsed": ..., "commands": ...}
    producer -> bench   @@bench {"event": "verified", "count": 5000, ...}

The bench reads the worker's CPU time when it sends a command and again when "done"
arrives, so the worker's CPU is counted over exactly the measured run; the check of the
results comes after "done", outside the measured time. Lines without the marker (a
library printing something) are not the bench's.

The measured run goes from the first enqueue to the moment the last result is seen in
the library's result store, polled with one cheap command at a time on a plain Redis
client (EXISTS over a chunk of result keys, or one counting command), whose number is
taken off the Redis commands counted for the run (INFO commandstats before and after).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis

MARK = "@@bench "
# Keys one EXISTS asks about while waiting. Results arrive nearly in queue order, so a
# chunk fills soon after its last job runs; a small chunk keeps each poll cheap for Redis
# (EXISTS over all of 5,000 keys every few milliseconds would take Redis time from the
# system being measured).
CHUNK = 64
POLL_SECONDS = 0.002
# Results checked through the library's store: every one (the values are compared too).
MISMATCHES_SHOWN = 3


class Producer(Protocol):
    """One peer library's way of sending jobs and reading their results."""

    # The bulk path the library documents, or "" if it has none (then "bulk" is refused).
    bulk_path: str
    # The command count_done sends (when result_keys gives None), taken off the run's count.
    poll_command: str

    def send(
        self, workload: str, args: list[Any], bulk: bool, options: dict[str, Any]
    ) -> list[Any]:
        """Enqueue one job per item of `args` (each the job's positional arguments), one
        call a job or through the bulk path; a handle per job, in order. `options` are
        the system's own (jobrunner's pool)."""
        ...

    def result_keys(self, handles: list[Any]) -> list[str] | None:
        """The Redis key each job's result is stored at, or None to use count_done."""
        ...

    def count_done(self, client: redis.Redis, handles: list[Any]) -> int:
        """How many of `handles` have a stored result, in one Redis command."""
        ...

    def results(self, handles: list[Any]) -> list[Any]:
        """Every job's value, read through the library's own result API (a missing one
        as MISSING)."""
        ...


class Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


def job_args(workload: str, n: int, seconds: float) -> list[list[Any]]:
    """Each job's arguments: a no-op returns its argument (the job's index, so every
    value differs), a sleep returns its seconds (as jobrunner's built-in ones do)."""
    if workload == "noop":
        return [[i] for i in range(n)]
    if workload == "sleep":
        return [[seconds] for _ in range(n)]
    raise ValueError(f"unknown workload {workload!r}")


def expected_values(workload: str, n: int, seconds: float) -> list[Any]:
    return [args[0] for args in job_args(workload, n, seconds)]


def compare(values: Sequence[Any], expected: Sequence[Any]) -> dict[str, Any]:
    """The check the bench records: how many results came back with the right value, and
    the first few that did not (index, value)."""
    wrong = [(i, repr(v)) for i, (v, e) in enumerate(zip(values, expected, strict=False)) if v != e]
    missing = max(0, len(expected) - len(values))
    return {
        "count": len(expected) - len(wrong) - missing,
        "expected": len(expected),
        "mismatches": wrong[:MISMATCHES_SHOWN],
    }


def command_counts(client: redis.Redis) -> dict[str, int]:
    """Every command Redis has run since it started, by name, those inside Lua scripts
    included (`INFO commandstats`: cmdstat_evalsha, cmdstat_client|setinfo, ...)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def commands_between(
    before: dict[str, int], after: dict[str, int], polls: int, poll_command: str
) -> dict[str, int]:
    """The commands a run cost, by name: the INFO that read `before` (counted by the one
    that read `after`) and the bench's own polls are not the system's."""
    used = {name: calls - before.get(name, 0) for name, calls in after.items()}
    used["info"] = used.get("info", 0) - 1
    used[poll_command] = used.get(poll_command, 0) - polls
    return {name: calls for name, calls in sorted(used.items()) if calls}


def wait_keys(client: redis.Redis, keys: list[str], deadline: float) -> tuple[int, int]:
    """Until every key exists; (keys seen, commands sent)."""
    seen = polls = 0
    while seen < len(keys):
        chunk = keys[seen : seen + CHUNK]
        polls += 1
        if client.exists(*chunk) == len(chunk):
            seen += len(chunk)
            continue
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
    return seen, polls


def wait_count(count: Callable[[], int], n: int, deadline: float) -> tuple[int, int]:
    polls = 0
    while True:
        polls += 1
        done = count()
        if done >= n or time.monotonic() > deadline:
            return done, polls
        time.sleep(POLL_SECONDS)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(MARK + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]


def run(producer: Producer, client: redis.Redis, command: dict[str, Any]) -> None:
    """One measured run: send, wait for the last result, then check every result."""
    workload, n = command["workload"], int(command["n"])
    seconds = float(command.get("seconds", 0.1))
    bulk = command["mode"] == "bulk"
    deadline_after = float(command.get("timeout", 300))
    args = job_args(workload, n, seconds)
    if bulk and not producer.bulk_path:
        emit("done", error="no bulk path", completed=0)
        emit("verified", count=0, expected=n, mismatches=[], error="no bulk path")
        return
    before = command_counts(client)
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        handles = producer.send(workload, args, bulk, command.get("options") or {})
        sent = time.perf_counter() - t0
        # The producer's CPU is its sending: the wait below is the bench's polling.
        cpu = time.process_time() - cpu0
        deadline = time.monotonic() + deadline_after
        keys = producer.result_keys(handles)
        if keys is not None:
            completed, polls = wait_keys(client, keys, deadline)
        else:
            completed, polls = wait_count(lambda: producer.count_done(client, handles), n, deadline)
    except Exception as exc:  # reported, and the bench goes on with the next run
        emit("done", error=error_text(exc), completed=0)
        emit("verified", count=0, expected=n, mismatches=[], error="not sent")
        return
    elapsed = time.perf_counter() - t0
    poll_command = "exists" if keys is not None else producer.poll_command
    used = commands_between(before, command_counts(client), polls, poll_command)
    emit(
        "done", elapsed=elapsed, send_seconds=sent, polls=polls, commands=sum(used.values()),
        by_command=used,
        producer_cpu=cpu, completed=completed, n=n,
        error=None if completed >= n else f"timed out: {completed} of {n} results",
    )  # fmt: skip
    try:
        values = producer.results(handles)
        emit("verified", **compare(values, expected_values(workload, n, seconds)), error=None)
    except Exception as exc:
        emit("verified", count=0, expected=n, mismatches=[], error=error_text(exc))


def serve(make: Callable[[str], Producer], describe: dict[str, Any]) -> None:
    """A producer's main, run as the module `bench.peers.<peer>.producer --redis-url URL`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    options = parser.parse_args()
    client = redis.Redis.from_url(options.redis_url)
    producer = make(options.redis_url)
    emit("ready", bulk_path=producer.bulk_path, **describe)
    for line in sys.stdin:
        if line.strip():
            run(producer, client, json.loads(line))
