"""A job record (and its result) is kept JOB_RESULT_TTL seconds, no less and no longer:
from the submission on, and still after the worker has written the outcome."""

from __future__ import annotations

from services.core import redis_keys
from tests.stack import Stack

# What a record's TTL may have run down by while the test looked: a share of the TTL
# (the test stack keeps the default, a day), not seconds of a busy machine's time.
SLACK = 0.01


def test_a_job_record_lives_the_result_ttl_no_less_no_longer(stack: Stack) -> None:
    configured = stack.settings().job_result_ttl
    redis = stack.redis()
    job_id = stack.submit("sleep", {"seconds": 0.2}, pool="threads")["id"]
    assert (1 - SLACK) * configured <= redis.ttl(redis_keys.job(job_id)) <= configured
    (done,) = stack.wait_for([job_id])
    assert done["state"] == "succeeded"
    assert (1 - SLACK) * configured <= redis.ttl(redis_keys.job(job_id)) <= configured
