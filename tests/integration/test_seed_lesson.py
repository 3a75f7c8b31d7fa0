"""The tutorial's lesson, measured on the real pools (ratios only, never absolute seconds).

Threads and greenlets overlap waiting; CPU-bound work only scales with processes.
Timings come from the worker's own timestamps, not from the test's polling.
"""

from __future__ import annotations

import pytest

from tests.stack import Stack, makespan


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_sleep_jobs_overlap_on_threads_and_gevent(stack: Stack, pool: str) -> None:
    count, seconds = 20, 0.2
    ids = [stack.submit("sleep", {"seconds": seconds}, pool=pool)["id"] for _ in range(count)]
    records = stack.wait_for(ids)
    assert all(r["state"] == "succeeded" for r in records)
    serial = count * seconds
    speedup = serial / makespan(records)
    # threads -c8 ideally 8x (ceil(20/8) = 3 rounds), gevent -c50 ideally 20x.
    assert speedup > 2.5, f"{pool}: only {speedup:.2f}x faster than serial"


def test_cpu_bound_jobs_scale_on_prefork_not_on_threads(stack: Stack) -> None:
    # Each job holds the GIL for ~0.2 s; threads run them one at a time, prefork two.
    count, params = 8, {"rounds": 700_000}
    by_pool = {}
    for pool in ("threads", "prefork"):
        ids = [stack.submit("cpu_hash", params, pool=pool)["id"] for _ in range(count)]
        records = stack.wait_for(ids, timeout=120)
        assert all(r["state"] == "succeeded" for r in records)
        by_pool[pool] = makespan(records)
    ratio = by_pool["threads"] / by_pool["prefork"]
    assert ratio >= 1.3, f"prefork only {ratio:.2f}x faster than threads ({by_pool})"
