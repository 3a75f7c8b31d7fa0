"""No accepted job is lost: not when a worker is killed mid-job, not when Redis restarts.

A stack of its own, with two workers per pool and a visibility timeout of a few seconds,
so a job held by a dead worker comes back quickly.

One mechanism at a time: the stack's workers run without the reconciler
(JOB_RECONCILER=off), which would recover a lost job about two visibility timeouts
later whatever Celery did; so a killed worker's job comes back here only by Celery's
own redelivery (late acknowledgement, reject on worker lost, the visibility timeout).
The tests of the reconciler come last, with a worker of their own that runs it
(`sweeper`). Each test checks that its fault hit what it meant to hit, and states the
times it promises as multiples of the visibility timeout.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest

from services.broker.celery_app import make_celery
from services.core.ids import new_uuid4
from services.jobs.store import JobStore
from services.jobs.submission import send_job_message
from tests.stack import Stack

VISIBILITY_TIMEOUT = 3
SHUTDOWN_GRACE = 3
CONCURRENCY = {"threads": 4, "prefork": 1, "gevent": 10}


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(
        tmp_path_factory.mktemp("faults"),
        env_overrides={
            "JOB_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "JOB_MAX_TIME_LIMIT": str(VISIBILITY_TIMEOUT - 1),
            "JOB_SHUTDOWN_GRACE": str(SHUTDOWN_GRACE),
            # Off, so a request with Redis down reaches its view: the limiter counts in
            # Redis and would answer every one of them 503 first.
            "API_RATE_LIMIT": "0",
            "JOB_RECONCILER": "off",
        },
    ).running([*CONCURRENCY.items()] * 2) as stack:
        yield stack


@pytest.fixture(scope="module")
def sweeper(fault_stack: Stack) -> Stack:
    """The reconciler, run by one more worker (the experiment worker: it takes no pool's
    jobs) for the tests that come after: the stack's own workers run none."""
    worker = fault_stack.worker_process("experiments")
    worker.env["JOB_RECONCILER"] = "on"
    fault_stack.start(worker)
    fault_stack.wait_ready()
    return fault_stack


def kill_hard(pid: int) -> list[int]:
    """kill -9 of a process and its children (a prefork worker's pool processes): what a
    machine crash or the OOM killer does. The pids killed."""
    doomed = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    for each in doomed:
        os.kill(each, signal.SIGKILL)
    return doomed


def logged(stack: Stack, text: str) -> bool:
    """Whether any worker of the stack wrote `text` in its log."""
    return any(text in w.log_path.read_text(errors="replace") for w in stack.workers)


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
def test_job_of_a_killed_worker_is_redelivered_to_another(fault_stack: Stack, pool: str) -> None:
    """kill -9 of the worker running a job (and of its pool processes): nobody
    acknowledged the message (late acks), so Redis gives it to another worker once the
    visibility timeout has passed since the delivery, and a lapsed lease lets it take the
    job over: attempt 2, within twice the timeout (kombu looks for expired messages every
    quarter of it; a redelivery that finds the lease not yet lapsed looks again half a
    lease later). The reconciler is off: Celery alone brings it back."""
    stack = fault_stack
    record = stack.submit("sleep", {"seconds": 2}, pool=pool)
    (running,) = stack.wait_for([record["id"]], states={"running"})
    victim = next(w for w in stack.workers if w.node == running["worker_node"])
    kill_hard(victim.pid)
    victim.process.wait(timeout=10)
    killed_at = time.time()
    stack.stop_worker(victim)
    # The kill hit the job mid-run: it is still the first attempt's, unfinished.
    hit = stack.job(record["id"])
    assert (hit["state"], hit["attempts"], hit["finished_at"]) == ("running", 1, None), hit

    (done,) = stack.wait_for([record["id"]], timeout=4 * VISIBILITY_TIMEOUT)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["worker_node"] != victim.node
    again_after = done["started_at"] - killed_at
    print(
        f"\n{pool} worker killed mid-job: attempts={done['attempts']}, started again "
        f"{again_after:.1f} s later on {done['worker_node']} "
        f"(visibility timeout {VISIBILITY_TIMEOUT} s)"
    )
    assert again_after <= 2 * VISIBILITY_TIMEOUT, again_after
    # Not before the timeout (less the moments between delivery and kill): Redis, not
    # anything else, gave the message back.
    assert again_after >= 0.5 * VISIBILITY_TIMEOUT, again_after
    # The pool is whole again for the next test.
    stack.start_worker(pool, CONCURRENCY[pool])
    stack.wait_ready()


def test_job_of_a_killed_prefork_child_is_handed_back_by_its_worker(fault_stack: Stack) -> None:
    """Only the pool process dies (the OOM killer's favourite); its worker lives on, sees
    it lost and hands the message back (task_reject_on_worker_lost; acknowledged, the
    job would stay `running` forever with the reconciler off): the redelivery takes the
    job over once its lease lapses, within twice the visibility timeout."""
    stack = fault_stack
    record = stack.submit("sleep", {"seconds": 2}, pool="prefork")
    (running,) = stack.wait_for([record["id"]], states={"running"})
    worker = next(w for w in stack.workers if w.node == running["worker_node"])
    os.kill(running["worker_pid"], signal.SIGKILL)  # the child that runs the job
    killed_at = time.time()
    hit = stack.job(record["id"])
    assert (hit["state"], hit["attempts"], hit["finished_at"]) == ("running", 1, None), hit
    (done,) = stack.wait_for([record["id"]], timeout=4 * VISIBILITY_TIMEOUT)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["worker_pid"] != running["worker_pid"]
    assert done["started_at"] - killed_at <= 2 * VISIBILITY_TIMEOUT
    assert worker.alive()  # only its pool process died


def test_a_duplicate_of_a_running_job_never_starts_a_second_run(fault_stack: Stack) -> None:
    """A second message for a job that runs, delivered as a redelivery would be (Celery
    requeues a running job's message at a worker's shutdown, or restores it after the
    visibility timeout while the job still runs): its claim finds the job's lease still
    renewed, so it waits and looks again, and the job runs once."""
    stack = fault_stack
    record = stack.submit("sleep", {"seconds": 2}, pool="threads")
    stack.wait_for([record["id"]], states={"running"})
    store = JobStore(stack.redis(), 3600)
    held = store.get(record["id"])
    assert held is not None
    duplicate = new_uuid4()
    send_job_message(make_celery(stack.settings()), held, duplicate, takeover=True)
    deadline = time.monotonic() + 10
    while not logged(stack, f"job {record['id']} is running elsewhere under a lease"):
        assert time.monotonic() < deadline, "no worker took the duplicate and deferred it"
        time.sleep(0.1)
    (done,) = stack.wait_for([record["id"]], timeout=4 * VISIBILITY_TIMEOUT)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1 and done["refused_writes"] == 0, done


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
def test_sigterm_lets_a_short_job_finish_on_its_worker(fault_stack: Stack, pool: str) -> None:
    stack = fault_stack
    record = stack.submit("sleep", {"seconds": 1}, pool=pool)
    (running,) = stack.wait_for([record["id"]], states={"running"})
    worker = next(w for w in stack.workers if w.node == running["worker_node"])
    worker.process.send_signal(signal.SIGTERM)
    (done,) = stack.wait_for([record["id"]], timeout=30)
    assert done["state"] == "succeeded"
    assert done["worker_node"] == worker.node and done["attempts"] == 1
    assert worker.process.wait(timeout=30) is not None
    stack.stop_worker(worker)
    stack.start_worker(pool, CONCURRENCY[pool])
    stack.wait_ready()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_sigterm_past_the_grace_loses_nothing_and_runs_once(fault_stack: Stack, pool: str) -> None:
    """prefork stops the job at the end of the grace and Celery hands it back: another
    worker runs it again (the reconciler is off). A thread cannot be stopped, so its
    worker lives until the job ends, and the copy of the message Celery requeued
    meanwhile finds the job's lease alive and never runs."""
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
    stack.start_worker(pool, CONCURRENCY[pool])
    stack.wait_ready()


# -- With the reconciler (from here on, the sweeper runs it) ------------------------------


def test_redis_restart_loses_no_accepted_job(sweeper: Stack) -> None:
    stack = sweeper
    assert stack.redis_server is not None
    # Fill the prefork slots, so accepted jobs are still waiting in Redis when it stops.
    accepted = [stack.submit("sleep", {"seconds": 1}, pool="prefork")["id"] for _ in range(4)]
    accepted += [stack.submit("noop", {"value": i}, pool="threads")["id"] for i in range(10)]
    waiting = stack.redis().llen("pool.prefork")

    stack.redis_server.stop(kill=True)
    assert waiting >= 1, "no job was waiting in Redis when it went down"
    # Every answer while Redis is down is a 503 problem that says when to try again.
    for method, path, body in (
        ("GET", "/readyz", None),
        ("POST", "/jobs", {"workload": "noop", "params": {}}),
        ("GET", "/jobs", None),
        # GET /pools asks Celery, whose broadcast fails with kombu's error, not redis-py's.
        ("GET", "/pools", None),
    ):
        answer = stack.http.request(method, f"{stack.url}{path}", json=body, timeout=15)
        assert answer.status_code == 503, (path, answer.text)
        assert answer.headers["Content-Type"] == "application/problem+json", path
        assert answer.headers["Retry-After"] == "1", path

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


def test_a_job_whose_message_vanished_is_sent_again(sweeper: Stack) -> None:
    """The window Celery's Redis transport leaves open: a message taken off the queue by
    a worker that dies before recording it as unacknowledged. Simulated by deleting the
    queue while the job waits in it; the job record brings it back, one visibility
    timeout after it was sent (the sweep runs every quarter of one)."""
    stack = sweeper
    blockers = [stack.submit("sleep", {"seconds": 2}, pool="prefork")["id"] for _ in range(2)]
    stack.wait_for(blockers, states={"running"})
    waiting = stack.submit("noop", {"value": "lost"}, pool="prefork")
    client = stack.redis()
    assert client.llen("pool.prefork") == 1  # its message, and nothing else
    client.delete("pool.prefork")  # the message is gone; the record still says queued

    (done,) = stack.wait_for([waiting["id"]], timeout=4 * VISIBILITY_TIMEOUT)
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1  # sent again, but run once
    assert done["started_at"] - waiting["submitted_at"] <= 2 * VISIBILITY_TIMEOUT


def test_a_running_job_whose_worker_and_message_vanished_runs_again(sweeper: Stack) -> None:
    """kill -9 of a job's worker, and with it the message Redis would deliver again (lost
    as a takeover retry sent while Redis blinked would be): only the record knows the job,
    `running` under a lease nobody renews. The sweep sends it again, as a takeover, a
    visibility timeout after the lease lapsed (itself one after the last renewal)."""
    stack = sweeper
    record = stack.submit("sleep", {"seconds": 2}, pool="prefork")
    (running,) = stack.wait_for([record["id"]], states={"running"})
    victim = next(w for w in stack.workers if w.node == running["worker_node"])
    kill_hard(victim.pid)
    killed_at = time.time()
    client = stack.redis()
    unacked = client.keys("unacked*")  # kombu's record of the messages workers hold
    assert unacked
    client.delete(*unacked)
    victim.process.wait(timeout=10)
    stack.stop_worker(victim)

    (done,) = stack.wait_for([record["id"]], timeout=5 * VISIBILITY_TIMEOUT)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2 and done["worker_node"] != victim.node
    assert done["started_at"] - killed_at <= 3 * VISIBILITY_TIMEOUT
    stack.start_worker("prefork", CONCURRENCY["prefork"])
    stack.wait_ready()
