"""Idempotent submission: the same Idempotency-Key returns the same job, never a second.

The key's claim (the job id and a hash of the request) and the job itself — record,
index entries, message — are written by one MULTI/EXEC, so Redis holds both or neither.
A claim made first and a job created after left two ways to break the promise: an API
dying in between left a claim without a job, which answered every repeat 503 for the
claim's lifetime; and a create that reached Redis but failed on the client's side freed
the claim, so the client's retry made a second job. WATCH on the key makes the check and
the write one step: of concurrent first requests, one commits and the others, finding
the key changed, read the claim again and replay its job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from services.core import redis_keys
from services.core.settings import get_settings
from services.jobs.record import JobRecord
from services.jobs.store import JobStore
from services.jobs.submission import (
    BrokerUnavailable,
    JobSpec,
    job_messages,
    new_record,
    unavailable,
    wait_for_replicas,
)

# Rounds of WATCH, read, write: each lost round means another request committed the key,
# which the next round finds, so two are enough; more only under a storm of Redis errors.
MAX_ROUNDS = 5


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


def fingerprint(spec: JobSpec) -> str:
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()


def submit_once(
    store: JobStore, celery: Celery, spec: JobSpec, client: str, key: str
) -> tuple[JobRecord, bool]:
    """Submit `spec` unless `client` already did with `key`: (record, replayed).
    IdempotencyConflict if the key was used for another request; BrokerUnavailable if
    Redis could not answer."""
    claim_key = redis_keys.idempotency(client, hashlib.sha256(key.encode()).hexdigest())
    request = fingerprint(spec)
    record = new_record(spec)
    messages = job_messages(celery, [record])
    claim = json.dumps({"job_id": record.id, "request": request})
    # JOB_ACCEPT_REPLICAS: a replayed job too, which may not have reached them yet.
    wanted = get_settings().job_accept_replicas
    try:
        with store.redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_ROUNDS):
                try:
                    pipe.watch(claim_key)
                    earlier = claimed_job(store, pipe.get(claim_key), request, key)
                    if earlier is not None:
                        if wanted:
                            wait_for_replicas(store.redis, wanted)
                        return earlier, True
                    pipe.multi()
                    store.create_many([record], messages=messages, pipe=pipe)
                    pipe.set(claim_key, claim, ex=store.ttl)
                    pipe.execute()
                    if wanted:
                        wait_for_replicas(store.redis, wanted)
                    return record, False
                except redis.WatchError:
                    # Another request took the key (or the connection broke while we
                    # watched, the outcome unknown): the next round reads what is there.
                    continue
    except (OperationalError, redis.RedisError) as exc:
        raise unavailable(exc) from exc
    raise BrokerUnavailable(f"Idempotency-Key {key!r}: Redis kept changing under the claim")


def claimed_job(store: JobStore, raw_claim: str | None, request: str, key: str) -> JobRecord | None:
    """The job an earlier request with this key made, or None if the key is free.

    A claim whose job no longer exists frees the key: its job expired, or it was left by
    an API that claimed first and created after, and died in between.
    """
    if raw_claim is None:
        return None
    earlier = json.loads(raw_claim)
    record = store.get(earlier["job_id"])
    if record is None:
        return None
    if earlier.get("request") != request:
        raise IdempotencyConflict(key)
    return record
