"""Runs services/jobs/reconcile.py in the background of every worker's main process.

A Redis lock lets one worker in the whole cluster sweep per interval, so adding workers
adds no load. The interval follows the visibility timeout: a lost message is noticed
after about as long as Celery itself takes to notice a lost worker.

With JOB_RECONCILER=off a worker does not sweep at all (nor take the lock from one that
does): what a test that proves Celery's own redelivery alone needs, since the sweep would
recover a lost job whatever Celery did, about two visibility timeouts later.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery.signals import worker_ready

from services.broker.celery_app import get_celery
from services.core import redis_keys
from services.core.settings import get_settings
from services.jobs.reconcile import requeue_lost_jobs

log = logging.getLogger(__name__)


def sweep_forever(stop: threading.Event) -> None:
    from worker.tasks import job_store  # the worker's own store, built in this process

    settings = get_settings()
    older_than = settings.job_visibility_timeout
    interval = max(1.0, older_than / 4)
    lock_key = redis_keys.reconcile_lock()
    while not stop.wait(interval):
        store = job_store()
        try:
            # The lock expires by itself: a worker that dies mid-sweep blocks nobody.
            if store.redis.set(lock_key, "1", nx=True, ex=max(1, int(interval))):
                requeue_lost_jobs(store, get_celery(), older_than)
                store.prune_indexes()
        except redis.RedisError as exc:
            log.debug("reconcile skipped: %s", exc)
        except Exception:
            log.exception("reconcile failed; will try again")


@worker_ready.connect
def _start(**_: Any) -> None:
    if get_settings().job_reconciler == "off":
        log.warning("JOB_RECONCILER=off: this worker re-sends no lost job")
        return
    thread = threading.Thread(
        target=sweep_forever, args=(threading.Event(),), name="reconcile", daemon=True
    )
    thread.start()
