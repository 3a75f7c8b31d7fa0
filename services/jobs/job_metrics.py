"""What the job store counts for Prometheus, and how the API reads it back.

The counting happens in transition.lua, in the very script that records each move of a
job: no round trip of its own, on whichever host ran the job (a prefork child, a gevent
greenlet, another machine), and a job is counted exactly when its move is recorded, so
once. The counts live in one hash (redis_keys.metrics()), one field per series:

    outcome|<pool>|<state>|<bucket>|<workload>  jobs that ended in <state>; for the ones
                                                with a run time (succeeded, failed), the
                                                histogram bucket it fell in (1..N, N+1
                                                past the last bound); 0 for none (a cancel)
    run_us|<pool>|<workload>                    those run times summed, in microseconds
    wait|<pool>|<bucket>|<workload>             first runs, by their wait since submission
    wait_us|<pool>|<workload>                   those waits summed, in microseconds
    retried|<pool>|<workload>                   failed runs queued again for a retry
    redelivered|<pool>|<workload>               runs started from a message delivered again
    fenced|<pool>|<workload>                    writes of runs that had lost their job
    claimed_on_take|<pool>|<workload>           runs claimed as their worker took the
                                                message (worker/pipeline.py)

The workload comes last: a user's workload may be named anything, `|` included (a pool's
name, a state and a bucket never hold one). A histogram keeps one field per bucket it
has seen, not cumulative; the reader adds them up, as Prometheus wants them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import redis

from services.core import redis_keys
from services.jobs.record import as_text

# Upper bounds, in seconds, of the buckets of both histograms (queue wait and run time):
# from a no-op's milliseconds to the hour-long job a visibility timeout allows.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip

# (pool, workload): the labels every series here has; outcomes add the state.
Labels = tuple[str, str]


def lua_buckets() -> str:
    """The line that gives transition.lua the bounds (BUCKETS), set before the script, so
    they are written in one place, here."""
    return "local BUCKETS = {" + ", ".join(repr(b) for b in DURATION_BUCKETS) + "}\n"


@dataclass
class Histogram:
    """Observations by bucket (index 0..N, N = past the last bound) and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    sum_seconds: float = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations at or below it), +Inf last: Prometheus's buckets."""
        bounds = [repr(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
        total, buckets = 0, []
        for bound, count in zip(bounds, self.counts, strict=True):
            total += count
            buckets.append((bound, float(total)))
        return buckets

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class JobMetrics:
    """The counts of every job since the hash was created, by labels."""

    outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict)  # pool, workload, state
    run: dict[Labels, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    wait: dict[Labels, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    retried: dict[Labels, int] = field(default_factory=dict)
    redelivered: dict[Labels, int] = field(default_factory=dict)
    fenced: dict[Labels, int] = field(default_factory=dict)
    claimed_on_take: dict[Labels, int] = field(default_factory=dict)


def read_job_metrics(client: redis.Redis) -> JobMetrics:
    """Every count of the hash, in one round trip (HGETALL: its size is bounded by pools x
    workloads x buckets, not by the number of jobs)."""
    return parse_job_metrics(as_text(client.hgetall(redis_keys.metrics())))


def parse_job_metrics(raw: dict[str, str]) -> JobMetrics:
    """The hash's fields (see the module's docstring) as JobMetrics; a field of another
    shape (a newer writer's) is skipped."""
    metrics = JobMetrics()
    counters = {
        "retried": metrics.retried, "redelivered": metrics.redelivered, "fenced": metrics.fenced,
        "claimed_on_take": metrics.claimed_on_take,
    }  # fmt: skip
    for name, value in raw.items():
        kind, _, rest = name.partition("|")
        pool, _, rest = rest.partition("|")
        number = int(value)
        if kind == "outcome":
            state, bucket, workload = _split(rest, 3)
            if workload is None:
                continue
            key = (pool, workload, state)
            metrics.outcomes[key] = metrics.outcomes.get(key, 0) + number
            if bucket != "0":
                _observe(metrics.run[(pool, workload)], bucket, number)
        elif kind == "wait":
            bucket, workload = _split(rest, 2)
            if workload is not None:
                _observe(metrics.wait[(pool, workload)], bucket, number)
        elif kind == "run_us":
            metrics.run[(pool, rest)].sum_seconds = number / 1_000_000
        elif kind == "wait_us":
            metrics.wait[(pool, rest)].sum_seconds = number / 1_000_000
        elif kind in counters:
            counters[kind][(pool, rest)] = number
    return metrics


def _split(rest: str, parts: int) -> list[str | None]:
    """`rest` cut into `parts`, the last (the workload) keeping any `|` of its own; all
    None when there are fewer."""
    pieces: list[str | None] = list(rest.split("|", parts - 1))
    return pieces if len(pieces) == parts else [None] * parts


def _observe(histogram: Histogram, bucket: str | None, count: int) -> None:
    index = int(bucket or 0) - 1  # Lua counts from 1
    if 0 <= index < len(histogram.counts):
        histogram.counts[index] += count
