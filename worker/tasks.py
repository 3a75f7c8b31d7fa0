"""The one Celery task: run a catalog workload for a job and record what happened.

Everything the lab measures is recorded here, by the worker, not by the client: when the
message was received, when the run started and finished, where (host, node, pid), which
attempt this is, and the CPU time it used.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import redis
from celery import Task
from celery.backends.base import DisabledBackend
from celery.exceptions import Reject, TimeLimitExceeded
from celery.signals import celeryd_after_setup, task_failure, task_received, worker_process_init
from gevent import monkey as gevent_monkey

from services.broker.celery_app import RUN_JOB_TASK, get_celery
from services.broker.messages import kwargs_shown
from services.catalog.registry import ResultNotJson, Workload, json_result
from services.catalog.workloads import CATALOG, FINGERPRINT
from services.core.redis_clients import redis_client
from services.core.settings import get_settings
from services.core.vocabulary import JobState
from services.jobs.group_commit import GroupCommit
from services.jobs.record import JobError, JobRecord, decode_record
from services.jobs.store import JobStore, Move, Transition
from worker import memory_limit
from worker.leases import Lease, LeaseKeeper
from worker.pipeline import CLAIM_HEADER, Outcome, lease_after_wait, outcomes

log = logging.getLogger(__name__)
# True in a gevent worker: `celery worker -P gevent` patches the standard library first.
GREENLETS = gevent_monkey.is_module_patched("threading")
if GREENLETS:
    from worker import gevent_tuning

    gevent_tuning.install()
T = TypeVar("T")
app = get_celery()

# Connections each worker process keeps to the job store (see job_store).
JOB_STORE_CONNECTIONS = 64

# Read once: a system call per job otherwise, and a worker's host does not change.
HOSTNAME = socket.gethostname()

# How long a job waits for Redis to come back before its message is handed back to the
# queue. Long enough to ride out a Redis restart, short enough not to pin a slot forever.
REDIS_PATIENCE_SECONDS = 60.0

# Where the worker's main process leaves the moment it took a message. The request dict
# travels with the job to the process or thread that runs it (prefork children included)
# and comes back as an attribute of `self.request`, so stamping it costs no Redis call.
RECEIVED_AT = "jobrunner_received_at"


@lru_cache(maxsize=1)
def job_store() -> JobStore:
    # Built on first use in each process: prefork children must not share the parent's
    # sockets.
    settings = get_settings()
    # A bounded pool that makes a job wait its turn for a connection: redis-py's default
    # pool fails past 100 connections, which a gevent worker's greenlets overran (each
    # then slept out a "Redis unavailable" retry); and a connection is held only for one
    # round trip, so a few dozen serve hundreds of greenlets.
    client = redis_client(
        settings.redis_url, max_connections=JOB_STORE_CONNECTIONS,
        wait_for_connection=REDIS_PATIENCE_SECONDS,
    )  # fmt: skip
    # The claims and outcomes of jobs running at once share round trips (group commit);
    # a prefork pool process runs one job at a time and sends its own (its outcomes
    # written behind its runs go in batches of their own: worker/pipeline.py).
    group_commit = None if IN_POOL_PROCESS else GroupCommit(client)
    return JobStore(client, settings.job_result_ttl, group_commit)


# This worker's Celery node name, in its main process (set once it is known).
NODE_NAME: str | None = None


@celeryd_after_setup.connect
def _remember_node_name(sender: str | None = None, **_: Any) -> None:
    global NODE_NAME
    NODE_NAME = sender


def _end_this_process(lease: Lease) -> None:
    """A prefork pool process whose run lost its job stops at once: another attempt has,
    or may soon have, taken the job over. Its worker starts a new pool process, and
    Celery hands the message back (task_reject_on_worker_lost); a claim of it finds the
    job held by the new attempt, or ended."""
    log.error("job %s: lease lost; ending pool process %d", lease.job_id, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


# A lease as long as the visibility timeout: a redelivery after a lost worker arrives
# about then, and by then the dead worker's lease has lapsed. Threads and greenlets
# cannot be stopped from outside; their late writes are fenced instead.
leases = LeaseKeeper(job_store, float(get_settings().job_visibility_timeout))


# True in a prefork pool process (worker_process_init), which runs one job at a time.
IN_POOL_PROCESS = False


@worker_process_init.connect
def _stop_runs_that_lose_their_lease(**_: Any) -> None:
    # Sent in each prefork pool process as it starts: only there can a run be stopped.
    global IN_POOL_PROCESS
    IN_POOL_PROCESS = True
    leases.on_lost = _end_this_process
    # And only there can one job's memory be bounded without failing the others'.
    memory_limit.install(get_settings().worker_memory_limit_prefork)


# A bound on the wait before a retry. The worker holds the retry's message unacknowledged
# while it counts down, and Redis delivers a message held past the visibility timeout
# again: the copy would run the job early. The API refuses a backoff that could wait this
# long (check_backoff in api/submissions.py); the bound is for records it did not check.
MAX_RETRY_DELAY = min(get_settings().job_visibility_timeout, get_settings().job_result_ttl)


@task_received.connect
def _stamp_received(request: Any = None, **_: Any) -> None:
    """Note the moment the worker took the message, before it waits for a free slot; the
    claim writes it into the record with the rest."""
    if request is not None and request.name == RUN_JOB_TASK:
        request.request_dict[RECEIVED_AT] = time.time()


def patiently(call: Callable[[], T]) -> T:
    """Run a Redis call, retrying through an outage (a Redis restart, say).

    If Redis stays away, the message is rejected with requeue: a job is never acknowledged
    without its outcome stored. Should even the requeue fail, the message is still in
    Celery's unacked set and comes back after the visibility timeout.
    """
    delay, deadline = 0.1, time.monotonic() + REDIS_PATIENCE_SECONDS
    while True:
        try:
            return call()
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise Reject(f"Redis unavailable: {exc}", requeue=True) from exc
            log.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self: Task, job_id: str, takeover: bool = False) -> None:
    store = job_store()
    claim = getattr(self.request, CLAIM_HEADER, None)
    if claim is not None:
        record = decode_record(claim["record"])
        # The claim found the job id in text Celery writes for display (argsrepr): run
        # it only if it is the job this message names; else claim as always.
        if record.id == job_id:
            run_claimed_on_take(self, store, record, claim["at"])
            return
        log.warning("job %s: the claim made on the take names job %s; claimed again",
                    job_id, record.id)  # fmt: skip
    # `takeover`: a redelivery that found the job's lease still valid and came back later.
    redelivered = takeover or bool((self.request.delivery_info or {}).get("redelivered"))
    claimed_at = time.monotonic()
    claimed = patiently(
        lambda: store.transition(
            job_id,
            # A redelivery (the message came back after its worker was lost) may take over
            # a running job; any other duplicate message finds the job no longer queued.
            {JobState.queued, JobState.running} if redelivered else {JobState.queued},
            JobState.running,
            fields={
                "received_at": getattr(self.request, RECEIVED_AT, None),
                "started_at": time.time(),
                "worker_host": HOSTNAME,
                "worker_node": self.request.hostname or "",
                "worker_pid": os.getpid(),
                # The id of the message that runs the job, which a cancel revokes: each
                # re-dispatch has its own (send_job_message in services/jobs/submission.py).
                "task_id": self.request.id,
            },
            count_attempt=True,
            return_record=True,
            lease_seconds=leases.lease_seconds,  # from Redis's clock, not this host's
            redelivered=redelivered,  # counted for Prometheus, once the run holds the job
        )
    )
    if claimed is None:
        log.warning("job %s has no record (expired or never accepted); skipped", job_id)
        return
    if not claimed.moved and redelivered and claimed.previous == JobState.running:
        # Its worker may be alive (a duplicate) or dead with a lease not yet lapsed: look
        # again later. Once the job ends, that later look finds it final and stops.
        log.info(
            "job %s is running elsewhere under a lease; this message looks again in %.0f s",
            job_id, leases.lease_seconds / 2,
        )  # fmt: skip
        raise self.retry(
            args=[job_id],
            kwargs={"takeover": True},
            countdown=leases.lease_seconds / 2,
            max_retries=None,
            # What monitors show (the workload), as the message it replaces showed it.
            kwargsrepr=getattr(self.request, "kwargsrepr", None),
        )
    if not claimed.moved:
        # Cancelled while queued, or finished by an earlier delivery: never run twice.
        log.info("job %s is %s; not run", job_id, claimed.previous)
        return
    record = claimed.record
    assert record is not None  # asked for with return_record
    # The attempt number the claim got is this run's fence: every later write of the run
    # names it, and is refused once another attempt holds the job.
    lease = leases.hold(job_id, record.attempts, claimed_at)
    try:
        run_claimed(self, store, record)
    finally:
        leases.release(lease)


def run_claimed_on_take(self: Task, store: JobStore, record: JobRecord, claimed_at: float) -> None:
    """Run a job its worker claimed as it took the message (worker/pipeline.py), and
    write its outcome behind the run. `claimed_at`: when the take was sent, on this
    host's monotonic clock (the main process's and this process's are one)."""
    # A job that waited in the worker has its lease renewed and checked first, so one
    # another attempt took over meanwhile never starts.
    held_since = patiently(lambda: lease_after_wait(
        store, record, claimed_at, leases.renew_every, leases.lease_seconds
    ))  # fmt: skip
    if held_since is None:
        return
    lease = leases.hold(record.id, record.attempts, held_since)
    handed_over = False
    try:
        handed_over = run_claimed(self, store, record, behind=lease)
    finally:
        if not handed_over:  # else released once the outcome is written
            leases.release(lease)


# Celery keeps the result backend per thread unless the backend says it is thread-safe,
# and under gevent every greenlet is a thread: each job built a backend of its own
# (celery#7960), a visible share of a gevent worker's time under py-spy, although
# jobrunner stores no Celery results (the job record is the result; task_ignore_result).
# What the app has is then Celery's DisabledBackend, which holds no state, so one serves
# every job.
if isinstance(app.backend, DisabledBackend):
    run_job.backend = app.backend


def run_claimed(
    self: Task, store: JobStore, record: JobRecord, behind: Lease | None = None
) -> bool:
    """Run a job this worker has claimed, and record its outcome (or its retry). With
    `behind`, the run's lease, the outcome is written behind the run (worker/pipeline.py)
    and the lease released once it is: True then. A retry is written before, as always."""
    job_id = record.id
    started_at = time.time()
    cpu_started = time.thread_time()
    try:
        result = json_result(workload_here(record.workload).run(record.params))
    except Exception as exc:  # any failure of the workload is the job's, not the worker's
        message = memory_limit.describe(exc) if memory_limit.is_memory_limit(exc) else str(exc)
        error = JobError(type=error_type(exc), message=message)
        errors = [*record.attempt_errors, error]
        common = {"attempt_errors": errors, "cpu_seconds": cpu_since(cpu_started)}
        if is_retryable(record.workload, exc) and len(errors) <= record.max_retries:
            delay = min(backoff_delay(record.backoff, len(errors)), MAX_RETRY_DELAY)
            # The record lives its TTL again from now, and says when the retry's message
            # is due: until then and a visibility timeout after, the reconciler leaves
            # the job alone (it is queued, but its message waits in this worker).
            fields = {**common, "error": error}
            retried = patiently(lambda: store.transition(
                job_id, {JobState.running}, JobState.queued, fields=fields, refresh_ttl=True,
                fence=record.attempts, dispatch_in=delay,
            ))  # fmt: skip
            if retried is None or not retried.moved:
                # Another attempt holds the job now (or it was cancelled): its retries
                # are that attempt's to make.
                log_refused(record, retried)
                return False
            # A new message for the same job; this delivery is acknowledged.
            raise self.retry(
                countdown=delay, max_retries=None, kwargsrepr=kwargs_shown(record.workload)
            ) from exc
        final = JobState.failed
        fields: dict[str, Any] = {**common, "error": error}
    else:
        final = JobState.succeeded
        fields = {"result": result, "cpu_seconds": cpu_since(cpu_started)}
    fields["finished_at"] = time.time()
    if behind is None:
        ended = patiently(
            lambda: store.transition(
                job_id, {JobState.running}, final, fields=fields, fence=record.attempts
            )
        )
        if ended is None or not ended.moved:
            log_refused(record, ended)
        return False
    # Claimed on the take, the record does not know yet which process ran the job, nor
    # when it really started (it waited in the worker): the outcome says.
    fields.update(worker_pid=os.getpid(), started_at=started_at)

    def answered(ended: Transition | Exception | None) -> None:
        # Released either way: not written, the lease lapses and the job runs again.
        leases.release(behind)
        if isinstance(ended, Exception):
            log.error("job %s: outcome not written (%s); it runs again once its lease lapses",
                      job_id, ended)  # fmt: skip
        elif ended is None or not ended.moved:
            log_refused(record, ended)

    move = Move(job_id, frozenset({JobState.running}), final, fields, fence=record.attempts)
    outcomes.submit(Outcome(store, move, answered))
    return True


def log_refused(record: JobRecord, answer: Transition | None) -> None:
    """A run's outcome that was not recorded: refused because another attempt took the
    job over (counted in the record's refused_writes), or the job ended otherwise."""
    if answer is not None and answer.refused:
        log.warning(
            "job %s: the outcome of attempt %d was refused; another attempt holds the job",
            record.id, record.attempts,
        )  # fmt: skip
    else:
        log.info("job %s: outcome not recorded; the job is %s", record.id,
                 answer.previous if answer else "gone")  # fmt: skip


def cpu_since(started: float) -> float | None:
    """The job's CPU time on its thread. Greenlets share one thread, so under gevent this
    would count every greenlet that ran meanwhile: unknown (None) there, and the lab
    measures the pool process's CPU instead."""
    if GREENLETS:
        return None
    return round(time.thread_time() - started, 6)


class WorkloadNotOnWorker(Exception):
    """The job names a workload this worker's catalog lacks: the API and this worker
    were started with different JOBRUNNER_WORKLOADS (or package versions)."""


def workload_here(name: str) -> Workload:
    entry = CATALOG.get(name)
    if entry is None:
        raise WorkloadNotOnWorker(
            f"worker {NODE_NAME or HOSTNAME} has no workload {name!r} (its catalog "
            f"{FINGERPRINT}: {', '.join(CATALOG)}); start it with the API's "
            "JOBRUNNER_WORKLOADS - /pools shows each worker's catalog"
        )
    return entry


def error_type(exc: Exception) -> str:
    """The job's error.type: the exception's class name, or for what jobrunner itself
    refused, a stable name a client can match."""
    if isinstance(exc, WorkloadNotOnWorker):
        return "workload_not_on_worker"
    if isinstance(exc, ResultNotJson):
        return "result_not_json"
    if memory_limit.is_memory_limit(exc):
        return "memory_limit"
    return type(exc).__name__


def is_retryable(workload: str, exc: Exception) -> bool:
    entry = CATALOG.get(workload)
    return entry is not None and isinstance(exc, entry.retryable)


def backoff_delay(base: float, failures: int) -> float:
    """Exponential with full jitter: spreads the retries of many jobs that failed together."""
    return random.uniform(0, base * 2 ** (failures - 1))


@task_failure.connect
def _record_time_limit(
    sender: Any = None,
    exception: BaseException | None = None,
    args: Sequence[Any] | None = None,
    **_: Any,
) -> None:
    """A hard time limit kills the pool process, so the task itself cannot record it; the
    worker's main process gets this signal instead. The job is the task's argument: its
    task id is the job id only on the first dispatch."""
    if getattr(sender, "name", None) != RUN_JOB_TASK or not args:
        return
    if not isinstance(exception, TimeLimitExceeded):
        return
    job_id = args[0]
    store = job_store()
    record = patiently(lambda: store.get(job_id))
    # Only if the killed run is the one holding the job: this worker's, under this task's
    # message. Its attempt number then fences the write against a takeover since.
    if record is None or record.worker_node != NODE_NAME or record.state != JobState.running:
        return
    error = JobError(type="time_limit", message=f"killed after its time limit ({exception}s)")
    patiently(lambda: store.transition(
        job_id, {JobState.running}, JobState.failed,
        fields={"error": error, "finished_at": time.time()}, fence=record.attempts,
    ))  # fmt: skip
