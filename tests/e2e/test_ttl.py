"""A job record (and its result) is kept JOB_RESULT_TTL seconds, no longer: from the
submission on, and still after the worker has written the outcome."""

from __future__ import annotations

from services.core import redis_keys
from services.core.settings import Settings
from tests.stack import Stack


def test_a_job_record_expires_within_the_result_ttl(stack: Stack) -> None:
    configured = Settings(**{k.lower(): v for k, v in stack.env.items()}).job_result_ttl
    redis = stack.redis()
    job_id = stack.submit("sleep", {"seconds": 0.2}, pool="threads")["id"]
    assert 0 < redis.ttl(redis_keys.job(job_id)) <= configured
    (done,) = stack.wait_for([job_id])
    assert done["state"] == "succeeded"
    assert 0 < redis.ttl(redis_keys.job(job_id)) <= configured
