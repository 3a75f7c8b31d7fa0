"""Leases on running jobs: how a redelivered message knows whether to take over, and how a
run that lost its job learns it.

A message comes back (redelivered) when its worker vanished, but also, with Celery's
Redis transport, as a duplicate while the job still runs (a requeue at shutdown left in
the unacked set, a long job past the visibility timeout), or after its worker was cut off
from Redis for longer than the visibility timeout. The run holding a job renews its lease;
a redelivery takes the job over only once the lease has lapsed, as a new attempt.

Each renewal names the attempt the run holds (its fence), so Redis renews only the
leases still held and says which are lost (services/jobs/renew.lua). A lost lease is
never renewed again, and its `on_lost` is called: a prefork worker's pool process kills
itself there, so the old run stops. A run cut off from Redis cannot hear that it lost;
with `on_lost` given, a watchdog declares its lease lost shortly *before* the lease can
lapse in Redis (counted from when the last confirmed renewal was sent, on this host's
monotonic clock), so the old run is gone before a takeover can start the new one.
Whatever the old run still writes is refused by its fence (transition.lua).

One thread per process renews every lease it holds in one round trip; a second watches
the deadlines, because a renewal stuck on a cut network blocks for the socket timeout.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from services.jobs.store import JobStore

log = logging.getLogger(__name__)


@dataclass
class Lease:
    job_id: str
    attempt: int  # the fence: the attempt number the run's claim got
    confirmed: float  # monotonic time at which the last renewal Redis confirmed was sent
    lost: bool = False


class LeaseKeeper:
    def __init__(
        self,
        store_factory: Callable[[], JobStore],
        lease_seconds: float,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> None:
        self._store_factory = store_factory
        self.lease_seconds = lease_seconds
        self.on_lost = on_lost
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pid: int | None = None
        self.threads: list[threading.Thread] = []

    @property
    def renew_every(self) -> float:
        return max(0.5, self.lease_seconds / 3)

    @property
    def guard(self) -> float:
        """How long before its lease could lapse in Redis an unconfirmed run gives up:
        a renewal sent at t extends the lease to at least t + lease on Redis's clock."""
        return min(1.0, self.lease_seconds / 10)

    def hold(self, job_id: str, attempt: int, claimed_at: float) -> Lease:
        """Keep renewing `job_id`'s lease for the run holding `attempt`, claimed by a
        call sent at monotonic time `claimed_at`."""
        lease = Lease(job_id, attempt, claimed_at)
        with self._lock:
            self._held[job_id] = lease
            self._ensure_threads()
        # The watchdog looks again within renew_every in any case: only a lease due before
        # then (one shorter than about two renewals) needs it woken now. Waking it on
        # every job cost a prefork pool process a thread switch a job (py-spy: 7 % of its
        # time on no-op jobs).
        if self._deadline(lease) < time.monotonic() + self.renew_every:
            self._wake.set()
        return lease

    def release(self, lease: Lease) -> None:
        """The run holding `lease` ended. Another run of the same job in this process (a
        takeover, after this one was cut off) keeps its own lease."""
        with self._lock:
            self._forget(lease)

    def _forget(self, lease: Lease) -> None:
        if self._held.get(lease.job_id) is lease:
            del self._held[lease.job_id]

    def _ensure_threads(self) -> None:
        # Per process: a prefork child does not inherit its parent's threads. Checked on
        # every job, so by pid alone (is_alive takes a lock); the threads run until stop().
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.threads = [
            threading.Thread(target=target, name=name, daemon=True)
            for target, name in (
                (self._renew_forever, "leases"),
                (self._watch_forever, "lease-watch"),
            )
        ]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """End this process's renewer and watchdog (a worker never does: they die with
        it; a test does, so its keepers do not outlive the Redis they renew against)."""
        self._stopping.set()
        self._wake.set()
        for thread in self.threads:
            thread.join()

    def _lose(self, leases: list[Lease], why: str) -> None:
        with self._lock:
            for lease in leases:
                lease.lost = True
                self._forget(lease)
        for lease in leases:
            log.warning("job %s: lease of attempt %d lost (%s)", lease.job_id, lease.attempt, why)
            if self.on_lost is not None:
                self.on_lost(lease)

    def renew_once(self) -> None:
        """One renewal of every lease held, in one round trip."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return
        sent = time.monotonic()
        try:
            lost = self._store_factory().renew_leases(
                {job_id: lease.attempt for job_id, lease in held.items()}, self.lease_seconds
            )
        except redis.RedisError as exc:
            log.warning("could not renew leases: %s", exc)
            return
        with self._lock:
            for job_id, lease in held.items():
                if job_id not in lost:
                    lease.confirmed = max(lease.confirmed, sent)
                elif lost[job_id] == "ended":
                    # Its own outcome was written (or a cancel took it): nothing to stop.
                    self._forget(lease)
        taken = [held[job_id] for job_id, why in lost.items() if why == "taken"]
        self._lose(taken, "another attempt holds the job")

    def _renew_forever(self) -> None:
        while not self._stopping.wait(self.renew_every):
            try:
                self.renew_once()
            except Exception:  # the renewer must outlive any one failure
                log.exception("lease renewal failed; will try again")

    def _deadline(self, lease: Lease) -> float:
        """When an unconfirmed run gives up (monotonic): before its lease can lapse."""
        return lease.confirmed + self.lease_seconds - self.guard

    def _watch_forever(self) -> None:
        """Without `on_lost` nothing can be done about an unconfirmed run, so nothing is
        watched: the run goes on, and only its writes are fenced."""
        while self.on_lost is not None and not self._stopping.is_set():
            with self._lock:
                now = time.monotonic()
                expired = [lease for lease in self._held.values() if self._deadline(lease) <= now]
                # With nothing held, sleep until woken (hold() sets _wake) or renew_every.
                next_due = min(
                    map(self._deadline, self._held.values()), default=now + self.renew_every
                )
            if expired:
                self._lose(expired, "no renewal confirmed within the lease; Redis unreachable")
                continue
            self._wake.clear()
            # A lease held meanwhile is due a lease from now, later than renew_every.
            self._wake.wait(max(0.0, min(next_due, now + self.renew_every) - now))
