"""A prefork worker whose Redis is far: each job's round trips leave the pool process's path.

A prefork pool process runs one job at a time, and each job used to wait for three round
trips to Redis one after another: the take that brought its message (a worker held one
message a process), the claim, and the outcome. On loopback that is nothing; 2 ms away it
was most of a short job's time, and no batching helps a process that has one job to
batch (docs/cluster.md has the arithmetic: any one of the three left on the path caps a
process at 40 % of its loopback throughput on a no-op). So, once the worker measures
Redis `PIPELINE_FROM_RTT` or more away (WORKER_PREFORK_PIPELINE=auto; `on` and `off`
force it):

- **claimed on the take**: the worker's main process claims each job in the same script
  that takes its message (services/jobs/claim_on_take.lua), and the claim travels to the
  pool process in the message's headers (`CLAIM_HEADER`): the process starts the job at
  once. Its record says `running` from the take, with the worker's host and node; the
  pool process's pid and its real start come with the outcome.
- **a few messages ahead**: the worker holds `DEPTH` messages a process instead of one
  while its jobs are short (under `SHORT_JOB_ROUND_TRIPS` round trips), so a process
  that ends a job finds the next one waiting in its worker instead of asking Redis. Long
  jobs keep one a process: a message waiting behind one would wait long, and another
  worker could have run it.
- **outcomes written behind the run**: the pool process hands its outcome to a thread of
  its own and returns; the outcomes waiting meanwhile go in one script call, one round
  trip (group commit). The message is then acknowledged before its outcome is in Redis, by
  about a round trip: a process killed in between leaves the job `running` under a lease
  nobody renews, and services/jobs/reconcile.py sends it again once the lease has lapsed
  and it waited as long again. A pool process its worker stops (SIGTERM) writes what is
  waiting first.

A message that goes back to its queue unrun (a worker stopping with messages it held, a
pool process lost) gives its claim back (`ClaimOnTake.release`, called by
services/broker/qos.py), so its job is `queued` again and the next taker runs it at once.

Fencing is unchanged: the claim's attempt number is the run's fence, the pool process
holds the lease from the moment of the take, and a job that waited in the worker longer
than a renewal interval has its lease renewed (and checked) before it starts.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import celeryd_after_setup, worker_process_init, worker_process_shutdown
from kombu.utils.encoding import bytes_to_str

from services.broker.celery_app import RUN_JOB_TASK
from services.broker.transport import Channel
from services.core import redis_keys
from services.core.settings import get_settings
from services.core.vocabulary import JobState
from services.jobs.record import JobRecord
from services.jobs.store import CLAIM_ON_TAKE_SCRIPT, JobStore, Move, Transition

log = logging.getLogger(__name__)

# Redis this far away (the worker's own measure of its takes) turns the pipeline on in
# auto. Loopback is ~0.1 ms; a network 0.5-2 ms or more.
PIPELINE_FROM_RTT = 0.001
# Messages held a process while jobs are short: enough that a process finds its next job
# waiting while the take that refills the worker is on its way (at 2 ms, two a process
# kept 58 % of the loopback throughput in a first measurement, four 74 %).
DEPTH = 4
# Jobs shorter than this many round trips count as short (see DEPTH).
SHORT_JOB_ROUND_TRIPS = 4
# The message header that carries a claim made on the take to the pool process.
CLAIM_HEADER = "jobrunner_claim"
# At most this many outcomes in one script call.
MAX_BATCH = 200
# How long a pool process told to stop (SIGTERM) waits for its outcomes to be written.
DRAIN_SECONDS = 2.0


class ClaimOnTake:
    """The worker's TakeClaims (services/broker/transport.py)."""

    script = CLAIM_ON_TAKE_SCRIPT

    def __init__(
        self,
        mode: str,
        lease_seconds: float,
        host: str,
        node: str,
        store: Callable[[], JobStore],
    ) -> None:
        self.mode = mode
        self.lease_seconds = lease_seconds
        self.host = host
        self.node = node
        self.store = store

    def wanted(self, round_trip: float) -> bool:
        if self.mode == "on":
            return True
        return self.mode == "auto" and math.isfinite(round_trip) and round_trip >= PIPELINE_FROM_RTT

    def depth(self, round_trip: float, job_seconds: float | None) -> int:
        if job_seconds is None:
            return 1  # nothing known of the jobs yet
        short = SHORT_JOB_ROUND_TRIPS * max(round_trip, PIPELINE_FROM_RTT)
        return DEPTH if job_seconds < short else 1

    def arguments(self) -> list[Any]:
        return [
            self.lease_seconds, redis_keys.job(""), redis_keys.job_index("state", ""),
            redis_keys.counters(), redis_keys.metrics(), RUN_JOB_TASK, self.host, self.node,
        ]  # fmt: skip

    def stamp(self, payload: dict[str, Any], claim: Any, sent_at: float) -> Any:
        # Only a claim that moved the job travels; any other answer (cancelled meanwhile,
        # record gone, not a message to claim here) leaves the pool process to claim it
        # itself, and decide, as it always has.
        if not claim or int(claim[0]) != 1:
            return None
        flat = [bytes_to_str(item) for item in claim[3]]
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        payload.setdefault("headers", {})[CLAIM_HEADER] = {"record": fields, "at": sent_at}
        return (bytes_to_str(claim[4]), int(fields["attempts"]))

    def release(self, tokens: list[Any]) -> None:
        """The jobs of messages going back to their queue unrun, back to `queued` (only
        while the claim's attempt still holds them). Their attempt stays counted: a run
        of it may be ending in a pool process being stopped, and its writes must stay
        fenced off from the next attempt's."""
        cleared = {"worker_host": None, "worker_node": None, "received_at": None,
                   "started_at": None}  # fmt: skip
        moves = [
            Move(
                job_id,
                frozenset({JobState.running}),
                JobState.queued,
                cleared,
                fence=attempt,
                released=True,
            )
            for job_id, attempt in tokens
        ]
        given_back = sum(
            bool(answer and answer.moved) for answer in self.store().transition_many(moves)
        )
        log.info("gave back %d of %d claim(s) made on takes", given_back, len(moves))


@celeryd_after_setup.connect
def _claim_on_takes(sender: str | None = None, instance: Any = None, **_: Any) -> None:
    """In a prefork worker's main process, unless WORKER_PREFORK_PIPELINE=off."""
    settings = get_settings()
    pool = getattr(instance, "pool_cls", None)
    if settings.worker_prefork_pipeline == "off" or not (
        isinstance(pool, type) and issubclass(pool, PreforkPool)
    ):
        return
    from worker.tasks import HOSTNAME, job_store, leases  # the task module's

    Channel.claims = ClaimOnTake(
        settings.worker_prefork_pipeline, leases.lease_seconds, HOSTNAME, sender or "", job_store
    )


def lease_after_wait(
    store: JobStore, record: JobRecord, claimed_at: float, renew_every: float, lease: float
) -> float | None:
    """From when a pool process may count the lease of a job claimed on the take at
    `claimed_at` (monotonic), or None if it must not run the job: it waited in the worker
    past a renewal nobody made (`renew_every`), and renewing it now (one round trip)
    found another attempt holding the job, or the job ended (a cancel)."""
    if time.monotonic() - claimed_at <= renew_every:
        return claimed_at  # the claim's lease has most of its length left
    sent = time.monotonic()
    lost = store.renew_leases({record.id: record.attempts}, lease)
    if lost:
        why = "taken over" if lost[record.id] == "taken" else "ended"
        log.info("job %s: claimed on the take, %s since; not run", record.id, why)
        return None
    return sent


@dataclass(frozen=True)
class Outcome:
    """A run's outcome, handed to the writer: the move, and what to do with its answer."""

    store: JobStore
    move: Move
    # Called with the move's answer, or the error that kept it from being written.
    answered: Callable[[Transition | Exception | None], None]


class OutcomeWriter:
    """Writes outcomes behind the runs, in a pool process (see the module's docstring):
    one thread, which sends every outcome waiting in one script call, so however far
    Redis is, the outcomes keep up with the runs at one round trip per batch."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def submit(self, outcome: Outcome) -> None:
        with self._lock:
            # A pool process does not inherit its parent's threads; and one drained
            # (worker_process_shutdown) may still write another.
            if self._pid != os.getpid() or self._thread is None:
                self._pid = os.getpid()
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._write_forever, args=(self._queue,), name="outcomes", daemon=True
                )
                self._thread.start()
        self._queue.put(outcome)

    @staticmethod
    def _write_forever(waiting: queue.SimpleQueue[Outcome | None]) -> None:
        stopping = False
        while not stopping:
            batch: list[Outcome] = []
            item = waiting.get()
            while item is not None:
                batch.append(item)
                if len(batch) >= MAX_BATCH or waiting.empty():
                    break
                item = waiting.get()
            stopping = item is None
            try:
                if batch:
                    OutcomeWriter._write(batch)
            except Exception:  # the writer outlives any one batch
                log.exception("%d outcome(s) not written", len(batch))

    @staticmethod
    def _write(batch: list[Outcome]) -> None:
        store, delay = batch[0].store, 0.1
        answers: list[Transition | Exception | None]
        while True:
            try:
                answers = list(store.transition_many([outcome.move for outcome in batch]))
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Until Redis is back: if it stays away past the lease, the lease's
                # watchdog ends this process (worker/leases.py), and the jobs run again.
                log.warning("%d outcome(s) not written yet (%s); retrying in %.1fs",
                            len(batch), exc, delay)  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:
                # One move Redis refused, or one this process could not send: each
                # alone, so that one bad outcome never holds back the others.
                answers = [OutcomeWriter._write_alone(outcome) for outcome in batch]
                break
        for outcome, answer in zip(batch, answers, strict=True):
            try:
                outcome.answered(answer)
            except Exception:
                log.exception("job %s: handling its outcome's answer failed", outcome.move.job_id)

    @staticmethod
    def _write_alone(outcome: Outcome) -> Transition | Exception | None:
        try:
            return outcome.store.transition_many([outcome.move])[0]
        except Exception as exc:
            return exc

    def drain(self, timeout: float | None = None) -> None:
        """Wait for every outcome handed over (a pool process about to exit), at most
        `timeout` seconds. Safe in a signal handler: it takes no lock."""
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            self._thread = None
            self._queue.put(None)  # SimpleQueue.put is reentrant
            thread.join(timeout)


outcomes = OutcomeWriter()


@worker_process_shutdown.connect
def _write_waiting_outcomes(**_: Any) -> None:
    # Sent in a pool process that ends its own life (--max-tasks-per-child, a memory
    # bound): the outcomes it handed over reach Redis first.
    outcomes.drain()


@worker_process_init.connect
def _write_waiting_outcomes_on_sigterm(**_: Any) -> None:
    """A stopping worker ends its pool processes with SIGTERM (Celery restores its
    default action in them), which would lose the outcomes still waiting to be written,
    and run those jobs again after their leases: they are written first, for at most
    DRAIN_SECONDS, then the signal does what it would have done."""
    if get_settings().worker_prefork_pipeline == "off":
        return

    def drain_then_terminate(signum: int, _frame: Any) -> None:
        outcomes.drain(DRAIN_SECONDS)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, drain_then_terminate)
