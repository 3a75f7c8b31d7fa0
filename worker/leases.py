"""Leases on running jobs: how a redelivered message knows whether to take over.

A message comes back (redelivered) when its worker vanished, but also, with Celery's
Redis transport, as a duplicate while the job still runs (a requeue at shutdown left in
the unacked set, a long job past the visibility timeout). The worker running a job renews
its lease; a redelivery takes the job over only once the lease has lapsed. One thread per
process renews every lease it holds in one round trip.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import redis

from services.jobs.store import JobStore

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, store_factory: Callable[[], JobStore], lease_seconds: float) -> None:
        self._store_factory = store_factory
        self.lease_seconds = lease_seconds
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def hold(self, job_id: str) -> None:
        with self._lock:
            self._held.add(job_id)
            self._ensure_thread()

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held.discard(job_id)

    def _ensure_thread(self) -> None:
        # Per process: a prefork child does not inherit its parent's thread. Checked on
        # every job, so by pid alone (is_alive takes a lock); the thread never returns.
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._renew_forever, name="leases", daemon=True)
        self._thread.start()

    def _renew_forever(self) -> None:
        interval = max(0.5, self.lease_seconds / 3)
        stop = threading.Event()
        while not stop.wait(interval):
            with self._lock:
                held = list(self._held)
            if not held:
                continue
            try:
                self._store_factory().renew_leases(held, self.lease_seconds)
            except redis.RedisError as exc:
                log.warning("could not renew leases: %s", exc)
            except Exception:  # the renewer must outlive any one failure
                log.exception("lease renewal failed; will try again")
