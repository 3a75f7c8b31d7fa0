"""Re-sending the message of a job that is queued in its record but in no queue.

Celery's Redis transport takes a message off the queue (BRPOP) and only then records it
as unacknowledged: a worker or Redis dying between the two loses the message, though
the job was accepted. The job record is written before the message and survives, so a
job still `queued` long after its last dispatch gets its message again. A duplicate is
harmless: the worker runs a job only from `queued` (or on a redelivery of a job whose
worker was lost), so a second message for the same job is skipped.
"""

from __future__ import annotations

import logging
import time

from celery import Celery

from services import keys
from services.ids import new_uuid4
from services.jobs import JobState, JobStore
from services.submission import send_job_message

log = logging.getLogger(__name__)


def requeue_lost_jobs(
    store: JobStore, celery: Celery, older_than: float, batch: int = 500
) -> list[str]:
    """Re-send the messages of jobs queued and not dispatched for `older_than` seconds."""
    now = time.time()
    horizon = int((now - older_than) * 1_000_000)
    index = keys.job_index("state", str(JobState.queued))
    candidates = store.redis.zrange(index, "-inf", horizon, byscore=True, offset=0, num=batch)
    resent = []
    for job_id in candidates:
        record = store.get(job_id)
        if record is None or record.state != JobState.queued:
            continue
        dispatched = store.redis.hget(keys.job(job_id), "dispatched_at")
        if dispatched and float(dispatched) > now - older_than:
            continue
        task_id = new_uuid4()  # the old task id may be revoked: see send_job_message
        store.set_fields(job_id, {"dispatched_at": now, "task_id": task_id})
        send_job_message(celery, record, task_id)
        resent.append(job_id)
    if resent:
        log.warning("re-sent %d job(s) queued without a message: %s", len(resent), resent[:10])
    return resent
