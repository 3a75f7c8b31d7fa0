"""A prefork worker far from Redis writes its outcomes behind its runs (worker/pipeline.py):
a message is acknowledged before its outcome is written. A pool process killed with an
outcome not yet written loses no job: the job comes back once its lease lapses
(services/jobs/reconcile.py) and runs again.

To kill the process at that very moment, Redis pauses its clients' writes (CLIENT PAUSE
WRITE) while a job claimed on its take runs: the job ends, its message is acknowledged
(the deletion waits in the worker, and is sent after), its outcome waits in Redis's
paused client; then the pool process is killed, and Redis drops what its dead client
sent. The pipeline is forced on (WORKER_PREFORK_PIPELINE=on) on loopback.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil

from services.core import redis_keys
from tests.stack import Stack

VISIBILITY_TIMEOUT = 4
JOB_SECONDS = 1.0


def test_a_pool_process_killed_with_its_outcome_not_written_loses_no_job(
    tmp_path: Path,
) -> None:
    env = {
        "JOB_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "JOB_MAX_TIME_LIMIT": str(VISIBILITY_TIMEOUT - 1),
        "WORKER_PREFORK_PIPELINE": "on",
    }
    with Stack(tmp_path, env_overrides=env).running([("prefork", 1)]) as stack:
        # The first job comes by BRPOP and is claimed by the pool process as always;
        # the second by the take after it, claimed there (its record has no pid yet).
        first, second = (
            stack.submit("sleep", {"seconds": JOB_SECONDS}, pool="prefork") for _ in range(2)
        )
        client = stack.redis()
        (running,) = stack.wait_for([second["id"]], timeout=30, states={"running"})
        assert running["worker_pid"] is None, running  # claimed on the take
        [worker] = stack.workers
        [pool_process] = psutil.Process(worker.pid).children()

        client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            # The job ends meanwhile; its outcome waits on Redis, unwritten.
            time.sleep(JOB_SECONDS + 0.5)
            pool_process.send_signal(signal.SIGKILL)
            killed_at = time.time()
            gone_by = time.monotonic() + 5  # dead (a zombie until its worker reaps it)
            while gone_dead(pool_process) is False and time.monotonic() < gone_by:
                time.sleep(0.05)
            assert gone_dead(pool_process)
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
        hit = stack.job(second["id"])
        # The kill hit: the job had run to its end (its message acknowledged, no pool
        # process holding it), and its outcome was lost with the process.
        assert (hit["state"], hit["attempts"], hit["finished_at"]) == ("running", 1, None), hit

        done, again = stack.wait_for([first["id"], second["id"]], timeout=10 * VISIBILITY_TIMEOUT)
        task_id = client.hget(redis_keys.job(second["id"]), "task_id")
    assert done["state"] == "succeeded" and done["attempts"] == 1, done
    # Its message had been acknowledged (written behind, the outcome had not reached
    # Redis when the run ended): the job came back by the reconciler, which sends a new
    # message under a new task id, not by Celery handing the old message back.
    assert task_id != second["id"], task_id
    assert again["state"] == "succeeded" and again["attempts"] == 2, again
    # Sent again by the reconciler once the lease lapsed, not at once; and within a few
    # visibility timeouts (the lease, then the reconciler's wait past it and its sweep).
    back_after = again["started_at"] - killed_at
    print(
        f"\nrun again {back_after:.1f} s after the kill (visibility timeout {VISIBILITY_TIMEOUT} s)"
    )
    assert 0.5 * VISIBILITY_TIMEOUT <= back_after <= 4 * VISIBILITY_TIMEOUT, back_after


def gone_dead(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
