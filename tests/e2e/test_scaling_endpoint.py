"""GET /scaling, what KEDA scales the pools on: queued and taken work, where the queue's
length alone reads 0 on a pool whose every slot is busy."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

from services.broker.queue_depth import priority_lists
from services.catalog.pools import POOLS
from tests.conftest import TEST_CONCURRENCY
from tests.stack import Stack, bearer

POOL = "prefork"  # the fewest slots in the test stack: cheapest to fill
SLOTS = TEST_CONCURRENCY[POOL]


def scaling(stack: Stack) -> dict:
    response = requests.get(f"{stack.url}/scaling", headers=bearer("reader"), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["pools"]


def list_lengths(stack: Stack) -> int:
    """What a scaler counting the queue's lists (KEDA's redis scaler, LLEN) would read."""
    redis = stack.redis()
    return sum(redis.llen(key) for key in priority_lists(POOLS[POOL].queue))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what}"
        time.sleep(0.1)


def running(stack: Stack, job_ids: list[str]) -> int:
    return sum(stack.job(job_id)["state"] == "running" for job_id in job_ids)


def test_depth_counts_queued_and_taken_jobs(stack: Stack) -> None:
    assert set(scaling(stack)) == set(POOLS)
    wait_until(lambda: scaling(stack)[POOL]["depth"] == 0, f"an idle {POOL} pool")
    jobs: list[str] = []
    try:
        # Exactly as many jobs as slots: all taken, all running, none left in the list.
        for _ in range(SLOTS):
            jobs.append(stack.submit("sleep", {"seconds": 30}, pool=POOL)["id"])
        wait_until(lambda: running(stack, jobs) == SLOTS, "running on every slot")
        full = scaling(stack)[POOL]
        assert full == {"queued": 0, "taken": SLOTS, "depth": SLOTS}
        # The list is empty: a scaler reading it alone sees an idle pool and scales it in.
        assert list_lengths(stack) == 0

        # Three more: they wait in the queue behind the running ones (or some in a
        # worker's prefetch, should it take more than it runs). Depth counts them all.
        for _ in range(3):
            jobs.append(stack.submit("sleep", {"seconds": 30}, pool=POOL)["id"])
        wait_until(lambda: scaling(stack)[POOL]["depth"] == len(jobs), "every job counted")
        over = scaling(stack)[POOL]
        assert over["taken"] >= running(stack, jobs) == SLOTS
        assert over["depth"] == over["queued"] + over["taken"] == len(jobs)
        assert list_lengths(stack) == over["queued"] < over["depth"]
    finally:
        for job_id in jobs:  # prefork terminates running jobs: the pool is free at once
            stack.http.delete(f"{stack.url}/jobs/{job_id}", timeout=10)
    # Finished work is acknowledged and leaves the count.
    wait_until(lambda: scaling(stack)[POOL]["depth"] == 0, "back to an idle pool")


def test_scaling_wants_a_key(stack: Stack) -> None:
    response = requests.get(f"{stack.url}/scaling", timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(
        f"{stack.url}/scaling", headers={"Authorization": "Bearer not-a-key"}, timeout=10
    )
    assert wrong.status_code == 401
