"""Running an experiment: each target in turn, measured from the jobs' own timestamps.

Called by the experiment worker (worker/experiments.py). Pool targets submit real jobs through
`submit_jobs`, the one way in, in batches as POST /jobs/batch does, and read what the
workers recorded; local targets run the same workload functions in this process's
executors. Each target's peak memory is sampled while it runs (services/lab/peak_rss.py).
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import time
import uuid
from dataclasses import replace
from typing import Any

import celery as celery_package
import redis
from celery import Celery

from services.broker.inspection import (
    LiveWorker,
    live_workers,
    redis_rtt_ms,
    start_measurement,
    stop_measurement,
)
from services.catalog.pools import pool_cannot_run
from services.catalog.registry import Workload
from services.catalog.workloads import FINGERPRINT, get_workload
from services.core import redis_keys
from services.core.vocabulary import FINAL_JOB_STATES
from services.jobs.store import JobStore
from services.jobs.submission import JobSpec, submit_jobs
from services.lab.executors import asyncio_mode, run_local
from services.lab.experiment_store import ExperimentStore
from services.lab.experiments import (
    Experiment,
    ExperimentReport,
    HostTopology,
    Topology,
    WorkerTopology,
)
from services.lab.metrics import JobTiming, ideal_makespan, measure, pool_usable_cores
from services.lab.peak_rss import PeakRss
from services.lab.verdict import verdict

# A pool target that has not finished by then is reported as failed, not waited for.
TARGET_DEADLINE_SECONDS = 900
PROGRESS_EVERY_SECONDS = 0.3


class ExperimentFailed(Exception):
    """Said to the user as the experiment's error."""


def topology(
    celery: Celery, client: redis.Redis, redis_version: str | None, pools: list[str]
) -> Topology:
    """Who takes part, as each worker says of itself: the workers of every pool, and the
    hosts of the lab and of the workers of `pools`, those the experiment runs on.
    `client` is the lab's own connection to Redis, whose round trip is the lab host's."""
    found = live_workers(celery)
    workers = {
        pool: [
            WorkerTopology(
                node=w.node,
                concurrency=w.concurrency,
                pid=w.pid,
                max_rss_bytes=w.max_rss_bytes,
                host=w.host,
                cores=w.cores,
            )
            for w in pool_workers
        ]
        for pool, pool_workers in found.items()
    }
    here = HostTopology(
        host=socket.gethostname(), cores=os.cpu_count() or 1, rtt_ms_to_redis=redis_rtt_ms(client)
    )
    return Topology(
        cores=here.cores,
        host=here.host,
        python=platform.python_version(),
        celery=celery_package.__version__,
        redis_server=redis_version,
        workers=workers,
        hosts=hosts_of([w for pool in pools for w in found[pool]], here),
    )


def hosts_of(workers: list[LiveWorker], lab: HostTopology) -> list[HostTopology]:
    """The lab's host, then each host the workers said they run on, by name, with the
    median of their round trips to Redis (a worker that gave no report has no host)."""
    by_host: dict[str, list[LiveWorker]] = {}
    for worker in workers:
        if worker.host is not None:
            by_host.setdefault(worker.host, []).append(worker)
    hosts = [] if lab.host in by_host else [lab]
    for host, there in sorted(by_host.items(), key=lambda item: (item[0] != lab.host, item[0])):
        rtts = [w.rtt_ms_to_redis for w in there if w.rtt_ms_to_redis is not None]
        hosts.append(
            HostTopology(
                host=host,
                cores=max(w.cores or 1 for w in there),
                rtt_ms_to_redis=round(statistics.median(rtts), 3) if rtts else None,
                nodes=sorted({w.node for w in there}),
            )
        )
    return hosts


class Progress:
    """Counts finished jobs of one target and saves them, at most every few tenths of a
    second, so a client polling GET /experiments/<id> sees the run move."""

    def __init__(self, store: ExperimentStore, experiment: Experiment, target: str) -> None:
        self.store, self.experiment, self.target = store, experiment, target
        self.saved_at = 0.0

    def set(self, done: int, force: bool = False) -> None:
        self.experiment.progress[self.target].done = done
        now = time.monotonic()
        if force or now - self.saved_at >= PROGRESS_EVERY_SECONDS:
            self.store.save(self.experiment)
            self.saved_at = now


def run_pool_target(
    jobs: JobStore, celery: Celery, experiment: Experiment, pool: str, progress: Progress
) -> list[JobTiming]:
    request = experiment.request
    spec = JobSpec(workload=request.workload, params=request.params, pool=pool)
    # In batches, as a client of POST /jobs/batch would: what is measured is the pool,
    # not the lab's own submission loop.
    ids = []
    for start in range(0, request.count, 1_000):
        size = min(1_000, request.count - start)
        ids += [record.id for record in submit_jobs(jobs, celery, [spec] * size)]
    pending, finished = set(ids), {}
    deadline = time.monotonic() + TARGET_DEADLINE_SECONDS
    while pending:
        pipe = jobs.redis.pipeline(transaction=False)
        ordered = list(pending)
        for job_id in ordered:
            pipe.hmget(redis_keys.job(job_id), "state")
        for job_id, (state,) in zip(ordered, pipe.execute(), strict=True):
            if state in FINAL_JOB_STATES:
                pending.discard(job_id)
                finished[job_id] = True
        progress.set(len(finished))
        if not pending:
            break
        if time.monotonic() > deadline:
            raise ExperimentFailed(
                f"{len(pending)} of {len(ids)} jobs on pool {pool!r} did not finish within "
                f"{TARGET_DEADLINE_SECONDS} s; is a worker serving it? (GET /pools)"
            )
        time.sleep(0.05)
    progress.set(len(ids), force=True)
    records = [jobs.get(job_id) for job_id in ids]
    return [
        JobTiming(
            submitted_at=r.submitted_at,
            started_at=r.started_at or r.finished_at or r.submitted_at,
            finished_at=r.finished_at or r.submitted_at,
            cpu_seconds=r.cpu_seconds,
            failed=r.state != "succeeded",
            pid=r.worker_pid,
        )
        for r in records
        if r is not None
    ]


def run_local_target(experiment: Experiment, executor: str, progress: Progress) -> list[JobTiming]:
    request = experiment.request
    done = [0]

    def one_done() -> None:
        done[0] += 1
        progress.set(done[0])

    runs = run_local(
        executor, request.workload, request.params, request.count, request.concurrency, one_done
    )
    progress.set(len(runs), force=True)
    return [
        JobTiming(
            r.submitted_at, r.started_at, r.finished_at, r.cpu_seconds, r.error is not None, r.pid
        )
        for r in runs
    ]


def job_seconds(kind: str, params: dict[str, Any], timings: dict[str, list[JobTiming]]) -> float:
    """One job's duration (io) or CPU time (cpu), the unit of the ideal bound.

    `sleep` says its own duration. Otherwise: for I/O, the shortest median run time over
    the targets (the least loaded one); for CPU, likewise the least median CPU time (CPU
    time grows less with load than run time does, but it grows: caches, contention).
    """
    if kind == "io" and "seconds" in params:
        return float(params["seconds"])
    if kind == "io":
        return min(
            statistics.median(t.finished_at - t.started_at for t in runs)
            for runs in timings.values()
        )
    measured = [
        statistics.median(t.cpu_seconds for t in runs if t.cpu_seconds is not None)
        for runs in timings.values()
        if any(t.cpu_seconds is not None for t in runs)
    ]
    if not measured:
        raise ExperimentFailed(
            "no target has a CPU time per job: gevent's comes from its workers' own "
            "measurement, and a worker did not report it (is it of an older version?)"
        )
    return min(measured)


def ran_as(target: str, workload: Workload) -> str | None:
    """How `target` called the workload, where it is not a plain call (TargetReport)."""
    if target == "asyncio":
        return asyncio_mode(workload)
    if workload.is_async and target != "gevent":  # gevent is refused an async workload
        return "event loop per thread"
    return None


def workload_here(name: str) -> Workload:
    """The experiment's workload in this process's catalog; said plainly when the lab
    worker was started with another catalog than the API that accepted it."""
    try:
        return get_workload(name)
    except KeyError:
        raise ExperimentFailed(
            f"the experiment worker has no workload {name!r} (its catalog {FINGERPRINT}); "
            "start it with the same JOBRUNNER_WORKLOADS as the API"
        ) from None


def local_meter(executor: str) -> PeakRss:
    """Local executors run their jobs in this process, a process pool in its children."""
    return PeakRss([os.getpid()], children=executor == "processpool")


def pool_cores(workers: list[WorkerTopology], lab_cores: int) -> tuple[int, int]:
    """(the cores of the pool's hosts, the cores it can keep busy: pool_usable_cores).
    A worker that did not say where it runs is taken as a host of its own with the
    lab's cores, the only count known."""
    per_host: dict[str, tuple[int, int]] = {}
    for w in workers:
        host = w.host or w.node
        concurrency, cores = per_host.get(host, (0, w.cores or lab_cores))
        per_host[host] = (concurrency + w.concurrency, cores)
    return sum(cores for _, cores in per_host.values()), pool_usable_cores(per_host)


def measure_pool(
    jobs: JobStore,
    celery: Celery,
    experiment: Experiment,
    pool: str,
    workers: list[WorkerTopology],
    progress: Progress,
) -> tuple[list[JobTiming], int | None, float | None]:
    """One pool target: its jobs' timings, the peak RSS and CPU seconds of its workers
    over the run as they measured themselves (None unless every one of them did: a
    partial sum would be a wrong number), with the pool's CPU shared out among the jobs
    where a job's own cannot be told (greenlets)."""
    nodes = [w.node for w in workers]
    measurement = f"{experiment.id}:{pool}:{uuid.uuid4().hex[:8]}"
    started = start_measurement(celery, nodes, measurement, TARGET_DEADLINE_SECONDS + 60)
    try:
        timings = run_pool_target(jobs, celery, experiment, pool, progress)
    finally:
        measured = stop_measurement(celery, list(started), measurement)
    complete = set(measured) == set(nodes)
    peak_rss = sum(m.peak_rss_bytes for m in measured.values()) if complete else None
    cpu = round(sum(m.cpu_seconds for m in measured.values()), 6) if complete else None
    if all(t.cpu_seconds is None for t in timings) and cpu is not None:
        timings = [replace(t, cpu_seconds=cpu / len(timings)) for t in timings]
    return timings, peak_rss, cpu


def run_experiment(
    experiment_id: str, jobs: JobStore, experiments: ExperimentStore, celery: Celery
) -> Experiment:
    experiment = experiments.get(experiment_id)
    if experiment is None:
        raise ExperimentFailed(f"no experiment {experiment_id}")
    experiment.state, experiment.started_at, experiment.error = "running", time.time(), None
    experiments.save(experiment)
    request = experiment.request
    try:
        workload = workload_here(request.workload)
        kind = workload.kind
        for pool in request.pools:
            why = pool_cannot_run(workload, pool)
            if why is not None:  # accepted under another catalog, where it was not async
                raise ExperimentFailed(f"{pool} cannot run it: {why}")
        redis_version = jobs.redis.info("server").get("redis_version")
        topo = topology(celery, jobs.redis, redis_version, request.pools)
        for pool in request.pools:
            if not topo.workers[pool]:
                raise ExperimentFailed(f"no live worker serves pool {pool!r} (GET /pools)")
        timings: dict[str, list[JobTiming]] = {}
        concurrency: dict[str, int] = {}
        peak_rss: dict[str, int | None] = {}
        pool_cpu: dict[str, float | None] = {}
        cores: dict[str, tuple[int, int]] = {}
        for target_kind, name in request.targets:
            progress = Progress(experiments, experiment, name)
            if target_kind == "pool":
                timings[name], peak_rss[name], pool_cpu[name] = measure_pool(
                    jobs, celery, experiment, name, topo.workers[name], progress
                )
                concurrency[name] = sum(w.concurrency for w in topo.workers[name])
                cores[name] = pool_cores(topo.workers[name], topo.cores)
            else:
                with local_meter(name) as meter:
                    timings[name] = run_local_target(experiment, name, progress)
                peak_rss[name], pool_cpu[name] = meter.peak_bytes, None
                concurrency[name] = 1 if name == "sequential" else request.concurrency
                cores[name] = (topo.cores, min(concurrency[name], topo.cores))
        unit = job_seconds(kind, request.params, timings)
        targets = [
            measure(
                name,
                target_kind,
                timings[name],
                concurrency[name],
                # For a pool, the cores its hosts give it (pool_cores); for a local
                # executor, the lab's.
                ideal_makespan(kind, request.count, concurrency[name], unit, cores[name][1]),
                peak_rss[name],
                cores=cores[name][0],
                usable_cores=cores[name][1],
                pool_cpu_seconds=pool_cpu[name],
                ran_as=ran_as(name, workload),
            )
            for target_kind, name in request.targets
        ]
        experiment.report = ExperimentReport(
            workload=request.workload,
            kind=kind,
            params=request.params,
            count=request.count,
            concurrency=request.concurrency,
            job_seconds=round(unit, 6),
            topology=topo,
            targets=targets,
            verdict=verdict(request.workload, kind, request.count, targets, topo.cores),
        )
        experiment.state = "succeeded"
    except ExperimentFailed as exc:
        experiment.state, experiment.error = "failed", str(exc)
    except Exception as exc:  # the experiment fails; the experiment worker lives on
        experiment.state, experiment.error = "failed", f"{type(exc).__name__}: {exc}"
    experiment.finished_at = time.time()
    experiments.save(experiment)
    return experiment
