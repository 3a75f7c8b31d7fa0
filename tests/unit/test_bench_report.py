"""The benchmark's table says, for each figure, whether the issue's target is met; the
per-pool rows send both sides the same way, one job a call or each side's bulk path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from celery import Celery

from bench.figures_queue import enqueue_rows, mixed_row
from bench.harness import Enqueue, send_jobrunner, send_stock
from bench.report import Row, chart, table
from services.broker.celery_app import make_celery
from services.catalog.pools import POOLS
from services.core.redis_clients import redis_client
from services.core.settings import Settings
from services.jobs.store import JobStore
from services.jobs.submission import JobSpec


@pytest.mark.parametrize(
    ("target", "stock", "jobrunner", "met"),
    [
        (">= 3x", [100, 90, 110], [330, 300, 280], True),  # medians 100 and 300
        (">= 3x", [100], [290], False),
        ("<= stock", [17.0], [16.5], True),
        ("<= stock", [17.0], [21.0], False),
        ("<= 1.5x", [3.0], [2.9], True),
        ("<= 5 ms", [], [4.1], True),
        ("<= 5 ms", [], [9.4], False),
        ("reported", [6.0], [8.0], None),
        (">= 10x", [], [], None),
    ],
)
def test_met_reads_the_target_as_worded(
    target: str, stock: list[float], jobrunner: list[float], met: bool | None
) -> None:
    assert Row("figure", target, "unit", stock, jobrunner).met() is met


def test_table_and_chart_show_every_ratio_figure(tmp_path: Path) -> None:
    rows = [
        Row("gevent sleep", ">= 3x", "jobs/s", [280.0], [900.0]),
        Row("commands per job", "<= stock", "cmds", [17.0], [16.0]),
        Row("memory per slot", "reported", "MiB", [6.0], [8.0]),
    ]
    text = table(rows)
    assert "| gevent sleep [jobs/s] | 280 | 900 | 3.21x | >= 3x | yes |" in text
    assert "| memory per slot [MiB] | 6.00 | 8.00 | 1.33x | reported | - |" in text
    drawn = chart(rows, tmp_path / "ratios.png", "test")
    assert drawn is not None and drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart(rows[2:], tmp_path / "none.png", "test") is None  # nothing with a target


# -- the per-pool rows compare like with like (issue 14) ---------------------------------------


def test_each_enqueue_path_has_a_row_and_the_mixed_row_pairs_the_old_sides() -> None:
    rows = enqueue_rows("threads", 8)
    assert [r.figure for r in rows.values()] == [
        "no-op one by one, threads -c8",
        "no-op bulk, threads -c8",
    ]
    rows[Enqueue.one_by_one].stock += [700.0]
    rows[Enqueue.one_by_one].jobrunner += [900.0]
    rows[Enqueue.bulk].stock += [1000.0]
    rows[Enqueue.bulk].jobrunner += [1400.0]
    mixed = mixed_row(rows, "threads", 8)
    # What the rows before issue 14 measured: jobrunner in bulk against stock one by one.
    assert (mixed.median(mixed.stock), mixed.median(mixed.jobrunner)) == (700.0, 1400.0)
    assert mixed.target == "reported" and mixed.met() is None
    text = table([*rows.values(), mixed])
    assert "| no-op one by one, threads -c8 [jobs/s] | 700 | 900 | 1.29x | >= 1.3x" in text
    assert "| no-op bulk, threads -c8 [jobs/s] | 1,000 | 1,400 | 1.40x | >= 1.3x" in text


# Half a bulk call past a whole one: the last call carries what is left.
N = 1_500


def test_jobrunner_one_by_one_is_a_script_a_job_and_bulk_one_a_thousand(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store, app = JobStore(redis_client(redis_url), 3600), make_celery(Settings(redis_url=redis_url))
    spec = JobSpec("noop", {}, "threads")
    send_jobrunner(store, app, spec, 1, Enqueue.one_by_one)  # loads the script
    for enqueue, scripts in ((Enqueue.one_by_one, N), (Enqueue.bulk, 2)):
        client.config_resetstat()
        send_jobrunner(store, app, spec, N, enqueue)
        assert client.info("commandstats")["cmdstat_evalsha"]["calls"] == scripts, enqueue
    assert client.llen(POOLS["threads"].queue) == 1 + 2 * N


def test_stock_bulk_sends_in_one_pipeline_and_one_by_one_a_round_trip_each(
    redis_url: str,
) -> None:
    # Stock's settings, without a result backend: it would subscribe to each task's result
    # on this Redis, and those reads are not the sending being counted here.
    app = Celery("bench-test", broker=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue="bulk")

    @app.task(name="bench-test.noop")
    def noop() -> None: ...

    client = redis.Redis.from_url(redis_url)
    send_stock(noop, [], 1, Enqueue.one_by_one)  # connects and declares the queue
    for enqueue in Enqueue:
        client.delete("bulk")
        reads = client.info("stats")["total_reads_processed"]
        ids = send_stock(noop, [], N, enqueue)
        reads = client.info("stats")["total_reads_processed"] - reads
        sent = [json.loads(m)["headers"]["id"] for m in client.lrange("bulk", 0, -1)]
        assert sorted(sent) == sorted(ids) and len(set(ids)) == N
        if enqueue is Enqueue.one_by_one:
            assert reads >= N  # an LPUSH and its round trip each
        else:
            # Pipelines of a thousand LPUSHes arrive in a few large reads, not one each.
            assert reads < N / 2, reads
