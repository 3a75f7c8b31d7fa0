"""Each worker reports on itself, by Celery remote control, so that whoever asks — the lab,
GET /pools — learns the truth wherever the worker runs.

Asking from outside cannot work on a cluster: a worker on another host has a pid that
names nothing (or something else) on the asker's host, memory its counters do not see,
and cores that are not the asker's. So the worker answers three commands (their names and
reply shapes are in services/broker/inspection.py):

- SELF_REPORT: host, node, pid, cores, concurrency, RSS and CPU seconds of the main
  process and its pool's children, its round trip to Redis, and its workload catalog
  (fingerprint and a hash per workload: GET /pools names what differs from the API's).
- MEASURE_START / MEASURE_STOP: a measurement the lab opens around one target's run;
  the reply to STOP holds the peak RSS over that span and the CPU seconds it used.

Why a sampler in the worker rather than the lab polling SELF_REPORT: a peak needs a sample
every few tens of milliseconds, and each poll over remote control is a broadcast and a
reply through Redis (two round trips, more on a real network) plus a turn of the worker's
consumer loop. The worker reads its own /proc in microseconds, so it samples
(services/lab/peak_rss.py, the sampler the lab uses for its local executors) and the lab
pays two commands per target, whatever the run's length and the network's latency.

Under gevent the sampler's thread is a greenlet (worker/tasks.py's context: `celery -P
gevent` patches threading first), which is enough: each sample is a short /proc read.
A CPU-bound greenlet that never yields delays a sample until it ends; memory grows while
jobs run and the sample after them still sees it, so the peak may be read a job late but
is not lost, unless freed within the same job.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any

import psutil
from celery.worker.control import control_command, inspect_command

from services.broker.inspection import (
    MEASURE_START,
    MEASURE_STOP,
    SELF_REPORT,
    Measured,
    SelfReport,
    encode,
    redis_rtt_ms,
)
from services.catalog.workloads import FINGERPRINT, WORKLOAD_FINGERPRINTS
from services.lab.peak_rss import PeakRss
from worker.tasks import job_store


@dataclass
class OpenMeasurement:
    meter: PeakRss
    cpu_before: float
    opened_at: float
    max_seconds: float


# Measurements open in this worker, by the id the lab gave. Touched only by the consumer's
# remote-control handler, one command at a time.
OPEN: dict[str, OpenMeasurement] = {}


@inspect_command(name=SELF_REPORT)
def self_report(state: Any, **_: Any) -> dict[str, Any]:
    """What this worker is, where, and what it costs now."""
    me = psutil.Process()
    tree = [me, *me.children(recursive=True)]
    # The worker's own connection to its job store: the round trip its jobs pay. In a
    # prefork parent this builds the store the first time; redis-py's pool notices a fork
    # and never hands the parent's sockets to a child.
    try:
        rtt: float | None = redis_rtt_ms(job_store().redis)
    except Exception:  # Redis unreachable from here is worth saying, not a failed report
        rtt = None
    pool = getattr(state.consumer, "pool", None)
    info = pool.info if pool is not None else {}
    report = SelfReport(
        host=socket.gethostname(),
        node=state.hostname,
        pid=os.getpid(),
        cores=os.cpu_count() or 1,
        concurrency=int(info.get("max-concurrency") or 1),
        rss_bytes=rss_bytes(tree),
        processes=len(tree),
        cpu_seconds=round(cpu_seconds(me), 6),
        # Linux reports ru_maxrss in KiB.
        max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        rtt_ms_to_redis=rtt,
        catalog=FINGERPRINT,
        workloads=WORKLOAD_FINGERPRINTS,
    )
    return encode(report)


@control_command(name=MEASURE_START)
def measure_start(
    state: Any, measurement: str = "", max_seconds: float = 3600.0, **_: Any
) -> dict[str, Any]:
    """Start sampling this worker's memory and counting its CPU, as `measurement`."""
    if not measurement:
        return {"error": "name the measurement"}
    forget_expired()
    if measurement in OPEN:  # asked twice (a retried broadcast): the first one's sampler ends
        OPEN.pop(measurement).meter.stop()
    me = psutil.Process()
    # Children are looked for (a scan of every process on the host) only in a worker that
    # has some: a prefork parent. The sampler's own cost is part of what is measured.
    meter = PeakRss([me.pid], children=bool(me.children()), max_seconds=max_seconds)
    OPEN[measurement] = OpenMeasurement(
        meter=meter.start(), cpu_before=cpu_seconds(me), opened_at=time.monotonic(),
        max_seconds=max_seconds,
    )  # fmt: skip
    return {"ok": measurement}


@control_command(name=MEASURE_STOP)
def measure_stop(state: Any, measurement: str = "", **_: Any) -> dict[str, Any]:
    """End `measurement`: its peak RSS and the CPU seconds used since it started."""
    opened = OPEN.pop(measurement, None)
    if opened is None:
        return {"error": f"no measurement {measurement!r} open on {state.hostname}"}
    peak = opened.meter.stop()
    measured = Measured(
        node=state.hostname,
        host=socket.gethostname(),
        peak_rss_bytes=peak,
        cpu_seconds=round(cpu_seconds(psutil.Process()) - opened.cpu_before, 6),
        seconds=round(time.monotonic() - opened.opened_at, 3),
    )
    return encode(measured)


def forget_expired() -> None:
    """Drop measurements nobody stopped (their sampler has ended by itself)."""
    now = time.monotonic()
    for name, opened in list(OPEN.items()):
        if now - opened.opened_at > opened.max_seconds:
            opened.meter.stop()
            del OPEN[name]


def rss_bytes(processes: list[psutil.Process]) -> int:
    """Summed as `top` would (pages a forked child shares count once per process)."""
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def cpu_seconds(me: psutil.Process) -> float:
    """User + system CPU of this process, its live descendants (a prefork pool's) and
    those it has reaped: a pool process replaced meanwhile moves from the live sum to the
    reaped one, so the difference of two readings stays right."""
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += child_times.user + child_times.system
    return total
