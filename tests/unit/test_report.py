"""The lab's arithmetic: percentiles, the ideal bound, efficiency, the verdict."""

from __future__ import annotations

import pytest

from services.lab.metrics import JobTiming, ideal_makespan, measure, percentile, pool_usable_cores
from services.lab.verdict import verdict


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0


@pytest.mark.parametrize(
    ("kind", "count", "concurrency", "seconds", "cores", "expected"),
    [
        ("io", 20, 8, 0.2, 2, 0.6),  # ceil(20 / 8) = 3 rounds of 0.2 s
        ("io", 1000, 100, 1.0, 2, 10.0),
        ("cpu", 8, 8, 0.5, 2, 2.0),  # 8 x 0.5 s of CPU on 2 cores, not 8
        ("cpu", 8, 1, 0.5, 2, 4.0),
    ],
)
def test_ideal_makespan(
    kind: str, count: int, concurrency: int, seconds: float, cores: int, expected: float
) -> None:
    assert ideal_makespan(kind, count, concurrency, seconds, cores) == pytest.approx(expected)


def test_a_pool_over_hosts_uses_each_hosts_cores_up_to_its_slots_there() -> None:
    # 2 prefork slots on each of two 2-core hosts: 4 jobs at once, though the lab has 2.
    assert pool_usable_cores({"w1": (2, 2), "w2": (2, 2)}) == 4
    # 8 slots on a 2-core host and 1 on a 16-core one: 2 + 1, not min(9, 18).
    assert pool_usable_cores({"w1": (8, 2), "w2": (1, 16)}) == 3
    assert ideal_makespan("cpu", 8, 4, 0.5, pool_usable_cores({"a": (2, 2), "b": (2, 2)})) == 1.0


def timings(starts: list[float], run: float) -> list[JobTiming]:
    return [JobTiming(0.0, s, s + run, run, False) for s in starts]


def test_measure_and_efficiency() -> None:
    report = measure("threads", "pool", timings([0.0, 0.0, 0.1, 0.1], 0.1), 2, 0.2, None)
    assert report.makespan_s == pytest.approx(0.2)
    assert report.throughput_per_s == pytest.approx(20)
    assert report.efficiency == pytest.approx(1.0)
    assert report.queue_wait_s.p50 == pytest.approx(0.0) and report.queue_wait_s.p99 == 0.1
    slow = measure("sequential", "local", timings([0.0, 0.1, 0.2, 0.3], 0.1), 1, 0.2, None)
    assert slow.efficiency == pytest.approx(0.5)
    assert slow.efficiency_raw == pytest.approx(0.5)


def test_a_bound_that_was_beaten_shows_in_the_raw_ratio() -> None:
    # 0.2 s measured against a claimed 0.3 s: the display says 100 %, the raw ratio 1.5.
    beaten = measure("threads", "pool", timings([0.0, 0.0, 0.1, 0.1], 0.1), 2, 0.3, None)
    assert beaten.efficiency == 1.0
    assert beaten.efficiency_raw == pytest.approx(1.5)


def test_verdict_for_cpu_names_the_gil_with_the_ratio() -> None:
    threads = measure("threads", "pool", timings([0, 0.1, 0.2, 0.3], 0.1), 8, 0.2, None)
    prefork = measure("prefork", "pool", timings([0, 0, 0.1, 0.1], 0.1), 2, 0.2, None)
    lines = verdict("cpu_hash", "cpu", 4, [threads, prefork], cores=2)
    assert "fastest is prefork" in lines[0]
    assert any("prefork 2.0x faster than threads on 2 cores" in line for line in lines)
    assert any("threads share one GIL" in line for line in lines)


def test_verdict_against_gevent_speaks_of_greenlets() -> None:
    gevent = measure("gevent", "pool", timings([0, 0.1, 0.2, 0.3], 0.1), 100, 0.2, None)
    prefork = measure("prefork", "pool", timings([0, 0, 0.1, 0.1], 0.1), 2, 0.2, None)
    lines = verdict("cpu_hash", "cpu", 4, [gevent, prefork], cores=2)
    (lesson,) = [line for line in lines if "faster than gevent" in line and "GIL" in line]
    assert "greenlets share one thread" in lesson


def test_verdict_when_processes_do_not_win_says_what_the_numbers_show() -> None:
    threads = measure("threads", "pool", timings([0, 0.1, 0.2, 0.3], 0.1), 8, 0.2, None)
    prefork = measure("prefork", "pool", timings([0, 0.1, 0.2, 0.3], 0.1), 2, 0.2, None)
    (one_core,) = verdict("cpu_hash", "cpu", 4, [threads, prefork], cores=1)[1:]
    assert "on 1 core" in one_core and "GIL" not in one_core
    (two_cores,) = verdict("cpu_hash", "cpu", 4, [threads, prefork], cores=2)[1:]
    assert "50% of its ideal with 2 of 2 cores" in two_cores
    assert "second core" not in two_cores


def test_verdict_speaks_of_the_cores_the_pool_had_not_the_labs() -> None:
    threads = measure("threads", "pool", timings([0, 0.1, 0.2, 0.3], 0.1), 8, 0.2, None)
    prefork = measure(
        "prefork", "pool", timings([0, 0, 0.1, 0.1], 0.1), 4, 0.1, None, cores=4, usable_cores=4
    )
    lines = verdict("cpu_hash", "cpu", 4, [threads, prefork], cores=2)
    assert any("prefork 2.0x faster than threads on 4 cores" in line for line in lines)
    slow = measure(
        "prefork", "pool", timings([0, 0.1, 0.2, 0.3], 0.1), 4, 0.1, None, cores=4, usable_cores=3
    )
    (line,) = verdict("cpu_hash", "cpu", 4, [threads, slow], cores=2)[1:]
    assert "with 3 of 4 cores to use" in line


def test_verdict_for_io_reports_efficiency_of_each() -> None:
    gevent = measure("gevent", "pool", timings([0, 0, 0, 0], 0.1), 100, 0.1, None)
    sequential = measure("sequential", "local", timings([0, 0.1, 0.2, 0.3], 0.1), 1, 0.4, None)
    lines = verdict("sleep", "io", 4, [gevent, sequential], cores=2)
    assert any("gevent at 100% of ideal (concurrency 100)" in line for line in lines)
    # No memory figures, so no claim about memory.
    assert lines[-1] == "gevent overlaps the most waits (100 at once)."


def test_verdict_backs_cheap_greenlets_with_memory_per_concurrent_job() -> None:
    mib = 2**20
    gevent = measure("gevent", "pool", timings([0, 0, 0, 0], 0.1), 100, 0.1, 100 * mib)
    threads = measure("threads", "pool", timings([0, 0, 0.1, 0.1], 0.1), 8, 0.1, 80 * mib)
    prefork = measure("prefork", "pool", timings([0, 0.1, 0.2, 0.3], 0.1), 2, 0.1, 90 * mib)
    line = verdict("sleep", "io", 4, [gevent, threads, prefork], cores=2)[-1]
    assert line == (
        "gevent overlaps the most waits (100 at once) in 100 MB of peak RSS, 1.0 MB per "
        "concurrent job; the next cheapest, threads, needs 10 MB (8 at once in 80 MB)."
    )
    # Where greenlets are not the cheapest per job, the verdict does not say they are.
    fat = measure("gevent", "pool", timings([0, 0, 0, 0], 0.1), 100, 0.1, 2000 * mib)
    line = verdict("sleep", "io", 4, [fat, threads], cores=2)[-1]
    assert "threads needs less, 10 MB per job" in line


def test_verdict_of_one_target_compares_it_with_nothing() -> None:
    alone = measure("processpool", "local", timings([0, 0, 0.1, 0.1], 0.1), 2, 0.2, None)
    lines = verdict("sleep", "io", 4, [alone], cores=2)
    assert lines[0] == "sleep x4 on processpool: 20.0 jobs/s."
    assert not any("faster than" in line for line in lines)
