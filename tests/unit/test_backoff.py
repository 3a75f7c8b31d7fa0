"""Retries wait exponentially longer, with full jitter (worker/tasks.py backoff_delay)."""

from __future__ import annotations

import statistics

from worker.tasks import backoff_delay


def test_each_retry_may_wait_twice_as_long_and_waits_are_spread() -> None:
    for failures in (1, 2, 3, 4):
        bound = 0.5 * 2 ** (failures - 1)
        delays = [backoff_delay(0.5, failures) for _ in range(2_000)]
        assert all(0 <= d <= bound for d in delays)
        # Full jitter: uniform over [0, bound], so jobs that failed together do not retry
        # together. Its mean is bound / 2; a fixed delay would have no spread at all.
        assert abs(statistics.mean(delays) - bound / 2) < bound * 0.05
        assert statistics.pstdev(delays) > bound / 4
