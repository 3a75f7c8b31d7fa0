"""Acknowledged messages leave kombu's unacked set, though their deletion is deferred
(services/broker/qos.py): nothing a finished job held comes back after the timeout."""

from __future__ import annotations

import json
import time

import pytest

from tests.stack import Stack

# kombu's Redis transport keeps unacknowledged messages here (its defaults).
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


def held_job_ids(stack: Stack) -> set[str]:
    """Job ids of the messages kombu still counts as unacknowledged."""
    client = stack.redis()
    held = set()
    for entry in client.hvals(UNACKED):
        message, _exchange, _routing_key = json.loads(entry)
        # Every message kombu holds for a consumer that acknowledges is a task (a control
        # client's replies are consumed without acknowledgement, so never held).
        held.add(message["headers"]["id"])
    return held


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
def test_finished_jobs_leave_the_unacked_set(stack: Stack, pool: str) -> None:
    ids = [stack.submit("noop", {"value": i}, pool=pool)["id"] for i in range(30)]
    assert {r["state"] for r in stack.wait_for(ids, timeout=60)} == {"succeeded"}

    deadline = time.monotonic() + 5
    while set(ids) & held_job_ids(stack) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(ids) & held_job_ids(stack)
    # The index goes with the hash: no tag is left in it for restore_visible to chase.
    assert stack.redis().zcard(UNACKED_INDEX) <= stack.redis().hlen(UNACKED) + 1
