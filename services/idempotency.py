"""Idempotent submission: the same Idempotency-Key returns the same job, never a second.

The first request claims the key with SET NX (one round trip, atomic across every API
process) for a job id it then submits; a repeat finds the claim and returns that job. The
key remembers a hash of the request, so reusing it for a different request is an error.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict

from celery import Celery

from services import keys
from services.jobs import JobRecord, JobStore
from services.submission import BrokerUnavailable, JobSpec, submit_job


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


def fingerprint(spec: JobSpec) -> str:
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()


def submit_once(
    store: JobStore, celery: Celery, spec: JobSpec, client: str, key: str
) -> tuple[JobRecord, bool]:
    """Submit `spec` unless `client` already did with `key`: (record, replayed)."""
    claim_key = keys.idempotency(client, hashlib.sha256(key.encode()).hexdigest())
    job_id = str(uuid.uuid4())
    claim = json.dumps({"job_id": job_id, "request": fingerprint(spec)})
    if store.redis.set(claim_key, claim, nx=True, ex=store.ttl):
        try:
            return submit_job(store, celery, spec, job_id=job_id), False
        except BrokerUnavailable:
            store.redis.delete(claim_key)  # nothing was accepted: the key is free again
            raise
    earlier = json.loads(store.redis.get(claim_key) or "{}")
    if earlier.get("request") != fingerprint(spec):
        raise IdempotencyConflict(key)
    # The first request may still be between its claim and its record; it takes
    # milliseconds, so wait a little rather than answer with a half-made job.
    deadline = time.monotonic() + 2.0
    while (record := store.get(earlier["job_id"])) is None:
        if time.monotonic() > deadline:
            raise BrokerUnavailable("the first request with this key did not complete")
        time.sleep(0.02)
    return record, True
