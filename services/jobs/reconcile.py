"""Re-sending the message of a job that no queue and no live worker holds any more.

Two ways a job loses its message while its record lives on (it is written first):
- `queued`: Celery's Redis transport takes a message off the queue (BRPOP) and only then
  records it as unacknowledged, so a worker or Redis dying between the two loses it;
- `running`: its worker died, and the message Redis would deliver again went with it
  (a takeover retry sent while Redis blinked, an unacknowledged entry lost), leaving a
  job `running` under a lease nobody renews.

A queued job last sent `older_than` seconds ago, and a running job whose lease lapsed
`older_than` seconds ago, get a new message; the running one as a takeover, so a worker
may claim it from `running`. A duplicate is harmless: the worker runs a job only from
`queued`, or takes over a `running` one only once its lease has lapsed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from celery import Celery

from services.core import redis_keys
from services.core.ids import new_uuid4
from services.core.vocabulary import JobState
from services.jobs.store import JobStore
from services.jobs.submission import send_job_message

log = logging.getLogger(__name__)

# Jobs read per round trip while paging through a state's index.
PAGE = 500


def requeue_lost_jobs(
    store: JobStore, celery: Celery, older_than: float, batch: int = 500
) -> list[str]:
    """Re-send the messages of at most `batch` jobs lost `older_than` seconds ago (see
    the module's docstring), oldest first; their ids."""
    # Redis's clock: lease_until and dispatched_at were written by it (transition.lua),
    # and this worker's clock may differ from theirs.
    now = store.now()
    resent = []
    for job_id, state in lost_jobs(store, before=now - older_than):
        if len(resent) >= batch:
            break
        if resend(store, celery, job_id, takeover=state == JobState.running, now=now):
            resent.append(job_id)
    if resent:
        log.warning("re-sent %d job(s) whose message was lost: %s", len(resent), resent[:10])
    return resent


def lost_jobs(store: JobStore, before: float) -> Iterator[tuple[str, JobState]]:
    """Queued jobs last sent before `before`, then running jobs whose lease lapsed before
    it. Each state's index is read a page at a time, past the jobs passed over: a crowd
    of jobs sent again a moment ago must not hide a lost one behind them."""
    for state in (JobState.queued, JobState.running):
        for job_id, fields in _paged(store, state, before):
            state_now, dispatched_at, lease_until = fields
            if state_now != state or float(dispatched_at or 0) > before:
                continue  # moved on since it was indexed, or sent again lately
            if state == JobState.running and float(lease_until or 0) > before:
                continue  # its worker renews the lease, or did until lately
            yield job_id, state


def _paged(
    store: JobStore, state: JobState, before: float
) -> Iterator[tuple[str, list[str | None]]]:
    """(id, [state, dispatched_at, lease_until]) of the jobs in `state`'s index submitted
    before `before` (a job sent or leased since cannot have been sent or leased before),
    oldest first, one round trip per page. Paged by offset: a job leaving the index
    meanwhile may shift another past a page's edge, to be read by the next sweep."""
    index = redis_keys.job_index("state", str(state))
    horizon = int(before * 1_000_000)  # index scores are microseconds since the epoch
    offset = 0
    while ids := store.redis.zrange(index, "-inf", horizon, byscore=True, offset=offset, num=PAGE):
        pipe = store.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(redis_keys.job(job_id), "state", "dispatched_at", "lease_until")
        yield from zip(ids, pipe.execute(), strict=True)
        offset += len(ids)


def resend(store: JobStore, celery: Celery, job_id: str, takeover: bool, now: float) -> bool:
    """Send `job_id` a new message under a new task id (the old one may be revoked); False
    if its record expired meanwhile."""
    record = store.get(job_id)
    if record is None:
        return False
    task_id = new_uuid4()
    store.set_fields(job_id, {"dispatched_at": now, "task_id": task_id})
    send_job_message(celery, record, task_id, takeover=takeover)
    return True
