"""The cluster's metrics, read at scrape time: what the workers counted in Redis, each pool's
queue depth, and its live workers.

Workers serve no metrics endpoint of their own. Each job's outcome, run time and wait are
counted in Redis by the script that records them (services/jobs/job_metrics.py), so the
counts of every worker process, on every host, prefork children included, are in one
place, and any API process exposes all of them. The same series therefore come from every
API instance: dashboards and alerts take the max across instances (deploy/prometheus/).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from services.broker.inspection import LiveWorker, live_workers
from services.broker.queue_depth import QueueDepth, queue_depths
from services.catalog.pools import POOLS
from services.core.vocabulary import FINAL_JOB_STATES
from services.jobs.job_metrics import JobMetrics, read_job_metrics

log = logging.getLogger(__name__)

POOL_WORKLOAD = ["pool", "workload"]
FINAL_STATES = sorted(str(state) for state in FINAL_JOB_STATES)


class ClusterCollector(Collector):
    """The cluster's series, read from Redis and from the workers at each collect()."""

    def __init__(self, client: redis.Redis, celery: Celery, inspect_timeout: float) -> None:
        self.client = client
        self.celery = celery
        self.inspect_timeout = inspect_timeout

    def describe(self) -> Iterable[Metric]:
        # Nothing up front: a registry would otherwise collect (read Redis, ask every
        # worker) just to learn the names.
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "jobrunner_redis_up",
            "1 if this scrape read Redis; 0 if it could not (the job, queue and worker "
            "series are then missing, not zero).",
        )
        try:
            jobs = read_job_metrics(self.client)
            depths = queue_depths(self.client)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unreadable (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from job_families(jobs)
        yield from queue_families(depths)
        try:
            workers = live_workers(self.celery, self.inspect_timeout)
            busy = busy_slots(self.celery, workers, self.inspect_timeout)
        except (redis.RedisError, OperationalError, OSError) as exc:
            # No answer is not "no workers": an alert on a pool without workers must not
            # fire because the scrape itself could not ask.
            log.warning("metrics: workers not inspected (%s)", exc)
            return
        yield from worker_families(workers, busy)


def job_families(jobs: JobMetrics) -> Iterator[Metric]:
    """The job series the workers counted (services/jobs/job_metrics.py). Every counter is
    reported for every (pool, workload) seen, 0 where nothing was counted yet: a series
    that appears with its first count hides that count from rate() and increase(), so a
    first failure or redelivery would go unseen by the alerts."""
    seen = sorted(
        {(pool, workload) for pool, workload, _ in jobs.outcomes}
        | set(jobs.wait) | set(jobs.run) | set(jobs.retried) | set(jobs.redelivered)
        | set(jobs.fenced) | set(jobs.claimed_on_take)
    )  # fmt: skip
    outcomes = CounterMetricFamily(
        "jobrunner_jobs",
        "Jobs that ended, by pool, workload and final state (succeeded, failed, cancelled); "
        "counted when the outcome is recorded, once per outcome.",
        labels=["pool", "workload", "state"],
    )
    for pool, workload in seen:
        for state in FINAL_STATES:
            count = jobs.outcomes.get((pool, workload, state), 0)
            outcomes.add_metric([pool, workload, state], count)
    yield outcomes
    for name, help_text, histograms in (
        (
            "jobrunner_job_queue_wait_seconds",
            "From a job's submission to the start of its first run (the submission on the "
            "API host's clock, the start on Redis's).",
            jobs.wait,
        ),
        (
            "jobrunner_job_run_seconds",
            "From the start to the end of the run that recorded a job's outcome (succeeded "
            "or failed), on the worker's clock.",
            jobs.run,
        ),
    ):
        family = HistogramMetricFamily(name, help_text, labels=POOL_WORKLOAD)
        for (pool, workload), histogram in sorted(histograms.items()):
            family.add_metric([pool, workload], histogram.cumulative(), histogram.sum_seconds)
        yield family
    for name, help_text, counts in (
        (
            "jobrunner_job_retries",
            "Failed runs queued again for a retry (the job's max_retries).",
            jobs.retried,
        ),
        (
            "jobrunner_job_redeliveries",
            "Runs started from a message delivered again: its worker was lost, or its "
            "acknowledgement never reached Redis.",
            jobs.redelivered,
        ),
        (
            "jobrunner_job_fenced_writes",
            "Writes of runs that no longer held their job (another attempt took it over), "
            "refused: late outcomes and late retries, never recorded.",
            jobs.fenced,
        ),
        (
            "jobrunner_job_claims_on_take",
            "Runs claimed by their worker as it took the message, in the same round trip (a "
            "prefork worker with Redis far away: WORKER_PREFORK_PIPELINE).",
            jobs.claimed_on_take,
        ),
    ):
        counter = CounterMetricFamily(name, help_text, labels=POOL_WORKLOAD)
        for labels in seen:
            counter.add_metric(list(labels), counts.get(labels, 0))
        yield counter


def queue_families(depths: dict[str, QueueDepth]) -> Iterator[Metric]:
    """Each pool's queue: waiting, taken, and both (services/broker/queue_depth.py)."""
    depth = GaugeMetricFamily(
        "jobrunner_queue_depth",
        "A pool's work in the system: messages waiting in its queue plus those taken by a "
        "worker and not yet acknowledged (running, or prefetched to run next).",
        labels=["pool"],
    )
    messages = GaugeMetricFamily(
        "jobrunner_queue_messages",
        "A pool's messages by status: queued (in its Redis lists) or taken (unacknowledged).",
        labels=["pool", "status"],
    )
    for pool, counted in depths.items():
        depth.add_metric([pool], counted.depth)
        messages.add_metric([pool, "queued"], counted.queued)
        messages.add_metric([pool, "taken"], counted.taken)
    yield depth
    yield messages


def busy_slots(
    celery: Celery, workers: dict[str, list[LiveWorker]], timeout: float
) -> dict[str, int]:
    """Jobs running now on each live worker, by node (Celery's `active`)."""
    nodes = sorted({worker.node for pool in workers.values() for worker in pool})
    if not nodes:
        return {}
    ask = celery.control.inspect(destination=nodes, limit=len(nodes), timeout=timeout)
    return {node: len(tasks) for node, tasks in (ask.active() or {}).items()}


def worker_families(workers: dict[str, list[LiveWorker]], busy: dict[str, int]) -> Iterator[Metric]:
    """Per pool: the workers that answered, their slots, and the slots running a job."""
    up = GaugeMetricFamily(
        "jobrunner_workers",
        "Workers of a pool that answered Celery's inspection at this scrape.",
        labels=["pool"],
    )
    slots = GaugeMetricFamily(
        "jobrunner_worker_slots",
        "Jobs a pool's live workers can run at once (the sum of their concurrency).",
        labels=["pool"],
    )
    running = GaugeMetricFamily(
        "jobrunner_worker_busy_slots",
        "Slots of a pool's live workers running a job now.",
        labels=["pool"],
    )
    for pool in POOLS:
        live = workers.get(pool, [])
        up.add_metric([pool], len(live))
        slots.add_metric([pool], sum(worker.concurrency for worker in live))
        running.add_metric([pool], sum(busy.get(worker.node, 0) for worker in live))
    yield up
    yield slots
    yield running
