"""API keys with scopes, and a per-key rate limit kept in Redis.

Keys are configured as SHA-256 hashes (JOBRUNNER_API_KEYS=NAME:SCOPES:HEX,...), so the
environment never holds a usable secret; the presented key is hashed and compared with
every configured hash in constant time. Scopes: `read` (GET), `submit` (create and
retry jobs), `admin` (cancel, experiments), `metrics` (GET /metrics, and nothing else: the
key Prometheus holds). Without keys nobody gets in, unless the
operator sets JOBRUNNER_AUTH=off explicitly, which is logged as a warning.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from dataclasses import dataclass

import redis
from flask import Flask, g, request

from api.context import api_context
from api.errors import Problem
from services.core import redis_keys
from services.core.api_keys import key_digest
from services.core.redis_clients import storage_refusal
from services.jobs.store import RateCount, RateLimited

log = logging.getLogger(__name__)

SCOPES = ("read", "submit", "admin", "metrics")

# Endpoints anyone may call: probes, the API's description, and the lab's delay target
# (workers call it from http_get jobs, without credentials).
PUBLIC_ENDPOINTS = frozenset(
    {"health.healthz", "health.readyz", "openapi", "delay.delay", "static"}
)
# The dashboard's pages and assets: a shell with no data in it. Every figure it shows comes
# from the API with the key the user signed in with, so it can do nothing a key cannot.
PUBLIC_BLUEPRINTS = frozenset({"dashboard"})
# Where the method alone does not say it: cancelling is an operator's act, and so is
# starting an experiment, which occupies every pool.
# Prometheus's scrape has a scope of its own: its key, stored in Prometheus's
# configuration, can read no job, and a job reader's key no metrics.
SCOPE_OVERRIDES = {"jobs.cancel_job": "admin", "metrics.metrics": "metrics"}
ADMIN_BLUEPRINTS = frozenset({"experiments"})
# Submissions count against their key's rate limit in the script that stores their jobs
# (services/jobs/create.lua), not in a round trip to Redis of their own: one round trip
# a request instead of two, which is what a submission costs an API far from Redis. Not
# with an Idempotency-Key, whose submission goes through scripts of its own.
COUNTED_IN_THEIR_WRITE = frozenset({"jobs.create_job", "batch.create_batch"})
# The counters (one a key and second) this process saw refuse a submission in its write.
# For the rest of that second the key's submissions are counted and refused before their
# body is read, as any other request is: else each refused batch would be validated and
# sent to Redis whole, only to be turned away there.
_over_limit: dict[str, int] = {}


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]
    sha256: bytes


def parse_keys(entries: list[str]) -> list[ApiKey]:
    """JOBRUNNER_API_KEYS as keys; ValueError, naming the entry, for a bad one. A name is
    what a key is known by (its rate limit, its Idempotency-Keys, the logs), so two keys
    under one name are refused rather than silently sharing them."""
    parsed: list[ApiKey] = []
    for entry in entries:
        try:
            name, scopes, digest = entry.split(":")
            key = ApiKey(name, frozenset(scopes.split("+")), bytes.fromhex(digest))
        except ValueError:
            raise ValueError(
                f"bad JOBRUNNER_API_KEYS entry {entry!r}: want NAME:SCOPES:HEX"
            ) from None
        unknown = key.scopes - set(SCOPES)
        if unknown or len(key.sha256) != 32:
            raise ValueError(f"bad JOBRUNNER_API_KEYS entry for {name!r}: scopes {sorted(unknown)}")
        if any(earlier.name == key.name for earlier in parsed):
            raise ValueError(f"duplicate JOBRUNNER_API_KEYS name {name!r}: give each key its own")
        parsed.append(key)
    return parsed


def required_scope(endpoint: str, method: str) -> str:
    if endpoint in SCOPE_OVERRIDES:
        return SCOPE_OVERRIDES[endpoint]
    if endpoint.split(".")[0] in ADMIN_BLUEPRINTS and method not in ("GET", "HEAD"):
        return "admin"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if method == "DELETE":
        return "admin"
    return "submit"


def identify(configured: list[ApiKey], header: str | None) -> ApiKey | None:
    if not header or not header.startswith("Bearer "):
        return None
    presented = key_digest(header.removeprefix("Bearer ").strip())
    found = None
    for key in configured:  # no early exit: the time taken does not depend on which matched
        if hmac.compare_digest(presented, key.sha256):
            found = key
    return found


def rate_count(client_name: str, limit: int) -> RateCount:
    """This request's count against its key's limit: one counter a key and second."""
    return RateCount(redis_keys.rate_window(client_name, int(time.time())), limit)


def enforce_rate_limit(client_name: str, rate: RateCount) -> None:
    """At most `rate.limit` requests per second per key, counted in Redis so every API
    process shares the count."""
    try:
        count = count_request(rate.counter)
    except redis.ResponseError as exc:
        if storage_refusal(exc) is None:
            raise
        # Redis is full: the request cannot be counted. Reads must go on (a client
        # watching its jobs), and every write is refused by Redis itself (a 507).
        return
    if count > rate.limit:
        raise too_many_requests(client_name, rate.limit)


def count_request(counter: str) -> int:
    """Count a request in its key's counter of this second (it expires right after)."""
    pipe = api_context().store.redis.pipeline(transaction=False)
    pipe.incr(counter)
    pipe.expire(counter, 2)
    count, _ = pipe.execute()
    return int(count)


def too_many_requests(client_name: str, limit: int) -> Problem:
    return Problem(
        429, "Too Many Requests", f"more than {limit} requests per second for key {client_name!r}",
        headers={"Retry-After": "1"},
    )  # fmt: skip


def count_in_write() -> RateCount | None:
    """The count a submission makes in the script that stores its jobs (None: none to
    make, or already made), taken by the write that makes it; a RateLimited from that
    write is answered with `refused_in_write`."""
    return g.pop("rate_count", None)


def refused_in_write(refusal: RateLimited) -> Problem:
    """The 429 for a submission its write refused; the key's next submissions this
    second are refused before any work (`_over_limit`)."""
    second = int(time.time())
    for counter, seen in list(_over_limit.items()):
        if seen < second:
            _over_limit.pop(counter, None)
    _over_limit[refusal.rate.counter] = second
    return too_many_requests(g.client_name, refusal.rate.limit)


def install_auth(app: Flask) -> None:
    settings = app.extensions["jobrunner"].settings
    configured = parse_keys(settings.jobrunner_api_keys)
    auth_off = settings.jobrunner_auth == "off"
    if auth_off:
        log.warning("JOBRUNNER_AUTH=off: every endpoint is open to anyone who can reach it")
    elif not configured:
        log.warning("no JOBRUNNER_API_KEYS configured: every protected endpoint answers 401")

    @app.before_request
    def _authenticate() -> None:
        endpoint = request.endpoint
        if (
            endpoint is None
            or endpoint in PUBLIC_ENDPOINTS
            or endpoint.startswith("openapi_")
            or endpoint.split(".")[0] in PUBLIC_BLUEPRINTS
        ):
            return  # unknown paths answer 404 on their own
        if auth_off:
            g.client_name = "anonymous"
        else:
            key = identify(configured, request.headers.get("Authorization"))
            if key is None:
                raise Problem(
                    401, "Unauthorized", "send a valid key as 'Authorization: Bearer <key>'",
                    headers={"WWW-Authenticate": 'Bearer realm="jobrunner"'},
                )  # fmt: skip
            scope = required_scope(endpoint, request.method)
            if scope not in key.scopes:
                raise Problem(
                    403, "Forbidden", f"key {key.name!r} lacks the {scope!r} scope this needs"
                )
            g.client_name = key.name
        if settings.api_rate_limit <= 0:
            return
        count = rate_count(g.client_name, settings.api_rate_limit)
        if endpoint in COUNTED_IN_THEIR_WRITE and request.method == "POST":
            idempotent = "Idempotency-Key" in request.headers
            if not idempotent and count.counter not in _over_limit:
                g.rate_count = count
                return
        enforce_rate_limit(g.client_name, count)

    @app.teardown_request
    def _count_submissions_that_wrote_nothing(_exc: BaseException | None) -> None:
        # A submission that never reached its write (a 400, a 413, a 422, Redis down) is
        # counted now, its answer made (not yet sent), so a stream of bad requests is held
        # to the limit too; its own answer was not a 429, whatever the count.
        pending = count_in_write()
        if pending is None:
            return
        with contextlib.suppress(redis.RedisError):
            count_request(pending.counter)
