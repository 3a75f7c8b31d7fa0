"""No accepted job is lost: not when a worker is killed mid-job, not when Redis restarts.

A stack of its own, with two workers per pool and a visibility timeout of a few seconds,
so a job held by a dead worker comes back quickly.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.stack import Stack

VISIBILITY_TIMEOUT = 3
SHUTDOWN_GRACE = 3


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("faults"),
        env_overrides={
            "JOB_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "JOB_MAX_TIME_LIMIT": str(VISIBILITY_TIMEOUT - 1),
            "JOB_SHUTDOWN_GRACE": str(SHUTDOWN_GRACE),
            # Off, so a request with Redis down reaches its view: the limiter counts in
            # Redis and would answer every one of them 503 first.
            "API_RATE_LIMIT": "0",
        },
    )
    try:
        stack.start_redis()
        stack.start_api()
        for pool, concurrency in (("threads", 4), ("prefork", 1), ("gevent", 10)):
            stack.start_worker(pool, concurrency)
            stack.start_worker(pool, concurrency)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
def test_job_of_a_killed_worker_finishes_on_another(fault_stack: Stack, pool: str) -> None:
    stack = fault_stack
    record = stack.submit("sleep", {"seconds": 2}, pool=pool)
    (running,) = stack.wait_for([record["id"]], states={"running"})
    victim = next(w for w in stack.workers if w.node == running["worker_node"])
    # kill -9 the worker's main process and, for prefork, the child running the job:
    # what a machine crash or the OOM killer does.
    doomed = [victim.pid, *(c.pid for c in psutil.Process(victim.pid).children(recursive=True))]
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    stack.stop_worker(victim)

    killed_at = time.time()
    (done,) = stack.wait_for([record["id"]], timeout=60)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["worker_node"] != victim.node
    print(
        f"\n{pool} worker killed mid-job: attempts={done['attempts']}, started again "
        f"{done['started_at'] - killed_at:.1f} s later on {done['worker_node']} "
        f"(visibility timeout {VISIBILITY_TIMEOUT} s)"
    )
    # The pool is whole again for the next test.
    stack.start_worker(pool, 4 if pool == "threads" else 1 if pool == "prefork" else 10)
    stack.wait_ready()


def test_job_of_a_killed_prefork_child_runs_again(fault_stack: Stack) -> None:
    """Only the pool process dies (the OOM killer's favourite); its worker lives on."""
    stack = fault_stack
    record = stack.submit("sleep", {"seconds": 2}, pool="prefork")
    (running,) = stack.wait_for([record["id"]], states={"running"})
    os.kill(running["worker_pid"], signal.SIGKILL)  # the child that runs the job
    (done,) = stack.wait_for([record["id"]], timeout=60)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["worker_pid"] != running["worker_pid"]


def test_redis_restart_loses_no_accepted_job(fault_stack: Stack) -> None:
    stack = fault_stack
    assert stack.redis_server is not None
    # Fill the prefork slots, so accepted jobs are still waiting in Redis when it stops.
    accepted = [stack.submit("sleep", {"seconds": 1}, pool="prefork")["id"] for _ in range(4)]
    accepted += [stack.submit("noop", {"value": i}, pool="threads")["id"] for i in range(10)]

    stack.redis_server.stop(kill=True)
    ready = stack.http.get(f"{stack.url}/readyz", timeout=15)
    assert ready.status_code == 503
    refused = stack.http.post(
        f"{stack.url}/jobs", json={"workload": "noop", "params": {}}, timeout=15
    )
    assert refused.status_code == 503
    assert refused.headers["Content-Type"] == "application/problem+json"
    listing = stack.http.get(f"{stack.url}/jobs", timeout=15)
    assert listing.status_code == 503
    # GET /pools asks Celery, whose broadcast fails with kombu's error, not redis-py's.
    pools = stack.http.get(f"{stack.url}/pools", timeout=15)
    assert pools.status_code == 503, pools.text
    assert pools.headers["Content-Type"] == "application/problem+json"
    assert pools.headers["Retry-After"] == "1"

    time.sleep(1)
    stack.redis_server.start()
    restarted = time.monotonic()
    deadline = restarted + 30
    while stack.http.get(f"{stack.url}/readyz", timeout=15).status_code != 200:
        assert time.monotonic() < deadline, "API did not recover after Redis came back"
        time.sleep(0.2)
    recovered = time.monotonic() - restarted

    # A worker may give up on a broker that vanished (Celery calls it unrecoverable);
    # its supervisor starts it again, as here.
    stack.restart_dead_workers()
    records = stack.wait_for(accepted, timeout=90)
    assert [r["state"] for r in records] == ["succeeded"] * len(accepted)
    print(
        f"\nRedis killed and restarted: readyz, POST /jobs, GET /jobs, GET /pools answered "
        f"503 while down; API ready {recovered:.1f} s after Redis; accepted={len(accepted)} "
        f"finished={sum(r['state'] == 'succeeded' for r in records)} lost=0"
    )
    # And the stack takes new work after the restart.
    after = stack.submit("sleep", {"seconds": 0.1}, pool="gevent")
    (done,) = stack.wait_for([after["id"]], timeout=60)
    assert done["state"] == "succeeded"


def test_a_job_whose_message_vanished_is_sent_again(fault_stack: Stack) -> None:
    """The window Celery's Redis transport leaves open: a message taken off the queue by
    a worker that dies before recording it as unacknowledged. Simulated by deleting the
    queue while the job waits in it; the job record brings it back."""
    stack = fault_stack
    blockers = [stack.submit("sleep", {"seconds": 2}, pool="prefork")["id"] for _ in range(2)]
    stack.wait_for(blockers, states={"running"})
    waiting = stack.submit("noop", {"value": "lost"}, pool="prefork")["id"]
    client = stack.redis()
    assert client.llen("pool.prefork") == 1
    client.delete("pool.prefork")  # the message is gone; the record still says queued

    (done,) = stack.wait_for([waiting], timeout=60)
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1  # sent again, but run once


def test_a_running_job_whose_worker_and_message_vanished_runs_again(fault_stack: Stack) -> None:
    """kill -9 of a job's worker, and with it the message Redis would deliver again (lost
    as a takeover retry sent while Redis blinked would be): only the record knows the job,
    `running` under a lease nobody renews. The sweep sends it again, as a takeover."""
    stack = fault_stack
    record = stack.submit("sleep", {"seconds": 2}, pool="prefork")
    (running,) = stack.wait_for([record["id"]], states={"running"})
    victim = next(w for w in stack.workers if w.node == running["worker_node"])
    doomed = [victim.pid, *(c.pid for c in psutil.Process(victim.pid).children(recursive=True))]
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    client = stack.redis()
    unacked = client.keys("unacked*")  # kombu's record of the messages workers hold
    assert unacked
    client.delete(*unacked)
    victim.process.wait(timeout=10)
    stack.stop_worker(victim)

    (done,) = stack.wait_for([record["id"]], timeout=60)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2 and done["worker_node"] != victim.node
    stack.start_worker("prefork", 1)
    stack.wait_ready()


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
def test_sigterm_lets_a_short_job_finish_on_its_worker(fault_stack: Stack, pool: str) -> None:
    stack = fault_stack
    record = stack.submit("sleep", {"seconds": 1}, pool=pool)
    (running,) = stack.wait_for([record["id"]], states={"running"})
    worker = next(w for w in stack.workers if w.node == running["worker_node"])
    concurrency = worker.concurrency
    worker.process.send_signal(signal.SIGTERM)
    (done,) = stack.wait_for([record["id"]], timeout=30)
    assert done["state"] == "succeeded"
    assert done["worker_node"] == worker.node and done["attempts"] == 1
    assert worker.process.wait(timeout=30) is not None
    stack.stop_worker(worker)
    stack.start_worker(pool, concurrency)
    stack.wait_ready()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_sigterm_past_the_grace_loses_nothing_and_runs_once(fault_stack: Stack, pool: str) -> None:
    """prefork stops the job at the end of the grace and another worker runs it again;
    a thread cannot be stopped, so its worker lives until the job ends and the copy of
    the message Celery requeued meanwhile finds the job's lease alive and never runs."""
    stack = fault_stack
    record = stack.submit("sleep", {"seconds": SHUTDOWN_GRACE + 4}, pool=pool)
    (running,) = stack.wait_for([record["id"]], states={"running"})
    worker = next(w for w in stack.workers if w.node == running["worker_node"])
    worker.process.send_signal(signal.SIGTERM)
    (done,) = stack.wait_for([record["id"]], timeout=60)
    assert done["state"] == "succeeded"
    if pool == "prefork":
        assert done["attempts"] == 2 and done["worker_node"] != worker.node
    else:
        assert done["attempts"] == 1 and done["worker_node"] == worker.node
    assert worker.process.wait(timeout=30) is not None
    stack.stop_worker(worker)
    stack.start_worker(pool, worker.concurrency)
    stack.wait_ready()
