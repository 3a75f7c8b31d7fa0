"""The queue figures: no-op and sleep jobs per pool, batch submission, and CPU scaling,
jobrunner against stock Celery (or against itself, solo)."""

from __future__ import annotations

import json
import time

from bench.harness import BULK, Bench, Enqueue, memory_per_slot
from bench.report import Row
from services.catalog.pools import POOLS

# What each side's call is, for each enqueue path (bench/harness.py, send_stock and
# send_jobrunner say why these).
ENQUEUE_PATHS = {
    Enqueue.one_by_one: "submit_job vs apply_async, a job a call",
    Enqueue.bulk: f"submit_jobs vs apply_async in Producer.batch, {BULK:,} a call",
}


def enqueue_rows(pool: str, concurrency: int) -> dict[Enqueue, Row]:
    """The no-op figure of one pool, one row per enqueue path, each side sent the same way
    in a row: like against like, so the ratio is the queue's and not the enqueue's."""
    rows = {}
    for enqueue, path in ENQUEUE_PATHS.items():
        figure = f"no-op {enqueue.value}, {pool} -c{concurrency}"
        rows[enqueue] = Row(figure, ">= 1.3x", "jobs/s", note=path)
    return rows


def mixed_row(rows: dict[Enqueue, Row], pool: str, concurrency: int) -> Row:
    """jobrunner in bulk against stock one by one, from the same runs: how the per-pool rows
    were measured until issue 14 (the record of 2026-11-25 and the headline table in
    docs/performance.md), kept to read that record by. Reported, not targeted: the two
    sides are not enqueued alike."""
    one_by_one, bulk = rows[Enqueue.one_by_one], rows[Enqueue.bulk]
    return Row(
        f"no-op jobrunner bulk vs stock one by one, {pool} -c{concurrency}", "reported", "jobs/s",
        stock=list(one_by_one.stock), jobrunner=list(bulk.jobrunner),
        note="the paths the per-pool rows mixed until issue 14",
    )  # fmt: skip


def bench_pools(b: Bench) -> None:
    """No-op enqueue -> stored result per pool, each side sent one job a call and in bulk;
    Redis commands per job, memory per slot."""
    n = 1_000 if b.quick else 2_000
    commands = {
        enqueue: Row(
            f"Redis commands per no-op job, {enqueue.value} (all pools)", "<= stock", "cmds"
        )
        for enqueue in Enqueue
    }
    for pool in ("threads", "prefork", "gevent"):
        conc = POOLS[pool].concurrency
        rows = enqueue_rows(pool, conc)
        memory = Row(f"worker memory per slot, {pool} -c{conc}", "reported", "MiB")
        stock, jr = b.stock_worker(pool, conc), b.jobrunner_worker(pool, conc)
        try:
            b.warm(pool)
            for rep in range(b.reps):
                for enqueue, row in rows.items():

                    def s(row: Row = row, enqueue: Enqueue = enqueue) -> None:
                        rate, cmds = b.run_stock("stock.noop", [], n, 300, enqueue)
                        row.stock.append(rate)
                        commands[enqueue].stock.append(cmds)

                    def j(row: Row = row, enqueue: Enqueue = enqueue, pool: str = pool) -> None:
                        rate, cmds = b.run_jr("noop", {}, pool, n, 300, enqueue)
                        row.jobrunner.append(rate)
                        commands[enqueue].jobrunner.append(cmds)

                    b.alternate(rep, s, j)
                    print(f"  {row.figure}: stock {row.stock[-1]:.0f}, jr {row.jobrunner[-1]:.0f}")
            memory.stock.append(memory_per_slot(stock, conc))
            memory.jobrunner.append(memory_per_slot(jr, conc))
        finally:
            b.stop(stock)
            b.stop(jr)
        b.rows += [*rows.values(), mixed_row(rows, pool, conc), memory]
    b.rows += commands.values()


def bench_sleep(b: Bench) -> None:
    """gevent -c500, 2,000 x sleep(0.1): makespan from first send to last stored result."""
    row = Row("gevent -c500, 2,000 x sleep(0.1)", ">= 3x", "jobs/s")
    n = 2_000
    stock, jr = b.stock_worker("gevent", 500), b.jobrunner_worker("gevent", 500)
    try:
        b.warm("gevent")
        for rep in range(b.reps):
            b.alternate(
                rep,
                lambda: row.stock.append(b.run_stock("stock.sleep", [0.1], n, 300)[0]),
                lambda: row.jobrunner.append(
                    b.run_jr("sleep", {"seconds": 0.1}, "gevent", n, 300)[0]
                ),
            )
            print(f"  {row.figure}: stock {row.stock[-1]:.0f}, jr {row.jobrunner[-1]:.0f}")
    finally:
        b.stop(stock)
        b.stop(jr)
    b.rows.insert(0, row)


def bench_batch(b: Bench) -> None:
    """POST /jobs/batch (1,000 per request) against a loop of stock apply_async."""
    row = Row("POST /jobs/batch (1,000/request) vs apply_async loop", ">= 10x", "jobs/s")
    per_run = 5 if b.quick else 10
    # Serialized once, as a client sending a prepared file would (jobrunner submit --batch).
    body = json.dumps({"jobs": [{"workload": "noop", "params": {}, "pool": "threads"}] * 1000})
    http, url = b.stack.http, f"{b.stack.url}/jobs/batch"
    headers = {"Content-Type": "application/json"}

    def jr() -> None:
        t0 = time.perf_counter()
        for _ in range(per_run):
            response = http.post(url, data=body, headers=headers, timeout=60)
            assert response.status_code == 202, response.text[:300]
        row.jobrunner.append(per_run * 1000 / (time.perf_counter() - t0))

    # Each API process builds its message templates and loads its script on first use.
    for _ in range(4):
        http.post(url, data=body, headers=headers, timeout=60)

    def stock() -> None:
        t0 = time.perf_counter()
        b.stock_send("stock.noop", [], 1000 * per_run)
        row.stock.append(per_run * 1000 / (time.perf_counter() - t0))

    for rep in range(b.reps):
        b.alternate(rep, stock, jr)
        print(f"  {row.figure}: stock {row.stock[-1]:.0f}, jr {row.jobrunner[-1]:.0f}")
    # Nobody consumes these queues here; drop the messages so later figures start empty.
    b.redis().delete("stock", POOLS["threads"].queue)
    b.rows.append(row)


def bench_cpu(b: Bench) -> None:
    """cpu_hash on jobrunner's prefork -c2 against the same worker with -P solo."""
    row = Row("cpu_hash, prefork -c2 vs solo", ">= 1.8x", "jobs/s")
    n = 16 if b.quick else 32
    # Enough CPU a job that what is measured is the work spread over the cores, not the
    # dispatch of each message.
    params = {"rounds": 300_000}
    # Two more repetitions than the other figures: a neighbour on the host that takes
    # part of one core for a moment costs two busy processes more than one, so single
    # runs of this ratio are noisier than the others.
    for rep in range(b.reps + 2):
        for solo in (False, True) if rep % 2 == 0 else (True, False):
            worker = b.jobrunner_worker("prefork", 1 if solo else 2, solo=solo)
            try:
                b.run_jr("noop", {}, "prefork", 5, 120)  # started and consuming
                rate = b.run_jr("cpu_hash", params, "prefork", n, 300)[0]
            finally:
                b.stop(worker)
            (row.stock if solo else row.jobrunner).append(rate)
        print(f"  {row.figure}: solo {row.stock[-1]:.1f}, -c2 {row.jobrunner[-1]:.1f}")
    row.note = "'stock' column = the same jobrunner worker with -P solo"
    b.rows.append(row)
