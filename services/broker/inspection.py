"""Which workers are alive, per pool, and what each one says of itself.

Celery's own inspection says which queues each worker consumes. The rest — the host it
runs on, its pid there, its cores, memory, CPU and round trip to Redis — each worker
says of itself by jobrunner's remote-control commands (worker/self_report.py), because
nobody else can: a worker on another host has a pid that means nothing here, and cores
and memory that this host's own counters do not see.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, TypeVar

import redis
from celery import Celery

from services.catalog.pools import POOLS

# The remote-control commands worker/self_report.py registers (named here, once, for both
# sides).
SELF_REPORT = "jobrunner_self_report"
MEASURE_START = "jobrunner_measure_start"
MEASURE_STOP = "jobrunner_measure_stop"

# Round trips a worker times to take the median of its latency to Redis.
RTT_PINGS = 5
# How long the lab waits for a measurement to be opened or closed by every worker of a
# pool. A reply comes in milliseconds; the broadcast stops waiting as soon as every
# worker asked has answered, so this only bounds a worker that is gone.
MEASURE_REPLY_SECONDS = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class SelfReport:
    """What a worker says of itself (the reply to SELF_REPORT)."""

    host: str  # socket.gethostname() where the worker runs
    node: str  # its Celery node name
    pid: int  # its main process, as its own host numbers it
    cores: int  # os.cpu_count() there
    concurrency: int
    rss_bytes: int  # now: the main process and its pool's child processes
    processes: int  # how many processes that is
    cpu_seconds: float  # user + system since it started, main process and children
    max_rss_bytes: int  # lifetime peak of the main process alone (ru_maxrss)
    rtt_ms_to_redis: float | None  # median round trip of a few PINGs on its job store
    # Its workload catalog (services/catalog/workloads.py): the fingerprint, and a hash
    # per workload name, so that a difference from the API's can be named. None from a
    # worker that predates them.
    catalog: str | None = None
    workloads: dict[str, str] | None = None


@dataclass(frozen=True)
class Measured:
    """What a worker measured of itself between MEASURE_START and MEASURE_STOP."""

    node: str
    host: str
    peak_rss_bytes: int  # main process and children, summed, sampled while it was open
    cpu_seconds: float  # user + system used meanwhile, main process and children
    seconds: float  # how long it was open


@dataclass(frozen=True)
class LiveWorker:
    node: str
    pool: str
    concurrency: int
    pid: int | None  # as the worker's own host numbers it
    max_rss_bytes: int | None  # lifetime peak of the worker's main process
    # From the worker's self-report; None for a worker that gave none (an older one).
    host: str | None = None
    cores: int | None = None
    rtt_ms_to_redis: float | None = None
    catalog: str | None = None  # its catalog's fingerprint
    workloads: dict[str, str] | None = None  # a hash of each of its workloads, by name


def live_workers(celery: Celery, timeout: float = 1.0) -> dict[str, list[LiveWorker]]:
    """Workers that answered within `timeout`, grouped by the pool whose queue they
    consume (a worker on no pool queue, like the experiment runner, is left out), each
    with what it says of itself."""
    queues: dict[str, Any] = celery.control.inspect(timeout=timeout).active_queues() or {}
    reports = self_reports(celery, list(queues), timeout)
    # A worker without jobrunner's command (one of an older version, during an upgrade)
    # is still listed, from Celery's own stats.
    silent = [node for node in queues if node not in reports]
    stats: dict[str, Any] = {}
    if silent:
        ask = celery.control.inspect(timeout=timeout, destination=silent, limit=len(silent))
        stats = ask.stats() or {}
    by_queue = {p.queue: p.name for p in POOLS.values()}
    found: dict[str, list[LiveWorker]] = {name: [] for name in POOLS}
    for node, consumed in sorted(queues.items()):
        described = describe(node, reports.get(node), stats.get(node, {}))
        for queue in consumed:
            pool = by_queue.get(queue.get("name"))
            if pool:
                found[pool].append(LiveWorker(pool=pool, **described))
    return found


def describe(node: str, report: SelfReport | None, stats: dict[str, Any]) -> dict[str, Any]:
    """A LiveWorker's fields but its pool, from its self-report or else Celery's stats."""
    if report is not None:
        return {
            "node": node, "concurrency": report.concurrency, "pid": report.pid,
            "max_rss_bytes": report.max_rss_bytes, "host": report.host,
            "cores": report.cores, "rtt_ms_to_redis": report.rtt_ms_to_redis,
            "catalog": report.catalog, "workloads": report.workloads,
        }  # fmt: skip
    rusage = stats.get("rusage")
    return {
        "node": node,
        "concurrency": stats.get("pool", {}).get("max-concurrency", 1),
        "pid": stats.get("pid"),
        # Linux reports ru_maxrss in KiB.
        "max_rss_bytes": rusage["maxrss"] * 1024 if isinstance(rusage, dict) else None,
    }


def self_reports(celery: Celery, nodes: list[str], timeout: float) -> dict[str, SelfReport]:
    """Each of `nodes` on itself, by node, for those that answered within `timeout`."""
    replies = ask(celery, SELF_REPORT, nodes, {}, timeout)
    return {node: r for node, body in replies.items() if (r := decode(SelfReport, body))}


def start_measurement(
    celery: Celery, nodes: list[str], measurement: str, max_seconds: float
) -> set[str]:
    """Have each of `nodes` sample its own memory and count its CPU from now, until
    stop_measurement or `max_seconds` (a lab that died leaves nothing running for
    long); the nodes that started."""
    arguments = {"measurement": measurement, "max_seconds": max_seconds}
    replies = ask(celery, MEASURE_START, nodes, arguments, MEASURE_REPLY_SECONDS)
    return {node for node, body in replies.items() if body.get("ok") == measurement}


def stop_measurement(celery: Celery, nodes: list[str], measurement: str) -> dict[str, Measured]:
    """What each of `nodes` measured since start_measurement, by node, for those that
    had it open (a worker restarted meanwhile has not)."""
    replies = ask(celery, MEASURE_STOP, nodes, {"measurement": measurement}, MEASURE_REPLY_SECONDS)
    return {node: m for node, body in replies.items() if (m := decode(Measured, body))}


def ask(
    celery: Celery, command: str, nodes: list[str], arguments: dict[str, Any], timeout: float
) -> dict[str, dict[str, Any]]:
    """`command` sent to `nodes`; the replies by node. The broadcast ends as soon as each
    has answered, else after `timeout`."""
    if not nodes:  # an empty destination would mean every worker
        return {}
    replies = celery.control.broadcast(
        command, arguments=arguments, destination=nodes, reply=True, timeout=timeout,
        limit=len(nodes),
    )  # fmt: skip
    answers = {}
    for reply in replies or []:
        for node, body in reply.items():
            # A worker without the command answers {"error": ...}.
            if isinstance(body, dict) and "error" not in body:
                answers[node] = body
    return answers


def encode(reply: SelfReport | Measured) -> dict[str, Any]:
    """A reply as the worker sends it: JSON's types only."""
    return asdict(reply)


def decode(kind: type[T], body: dict[str, Any]) -> T | None:
    """A reply read back; None if it lacks a required field (a worker of another
    version). Fields with a default may be missing (an older worker); fields a newer
    worker adds are left out."""
    known = fields(kind)  # type: ignore[arg-type]
    required = {f.name for f in known if f.default is MISSING and f.default_factory is MISSING}
    if not required <= set(body):
        return None
    return kind(**{f.name: body[f.name] for f in known if f.name in body})


def redis_rtt_ms(client: redis.Redis, pings: int = RTT_PINGS) -> float:
    """The median of `pings` PING round trips over `client`, in milliseconds: what one
    round trip to Redis costs from here, connection pool and all."""
    samples = []
    for _ in range(pings):
        started = time.perf_counter()
        client.ping()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 3)
