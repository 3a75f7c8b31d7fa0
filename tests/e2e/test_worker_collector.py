"""The process that runs a worker's jobs, on every pool, has what it loaded at start frozen
out of the garbage collector (worker/collector.py): a job reads its own process's frozen
count through a workload of a package written for the test."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator

import pytest

from tests.stack import Stack

PROBE = '''
import gc
import os

from jobrunner import workload


@workload
def collector_state() -> dict:
    """What the collector of the process running this job leaves alone."""
    return {"frozen": gc.get_freeze_count(), "pid": os.getpid()}
'''

# A worker's imports alone make about 100,000 objects; a process that froze nothing
# reports 0.
AT_LEAST_FROZEN = 10_000


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("probe-package")
    (folder / "gcprobe.py").write_text(textwrap.dedent(PROBE))
    env = {
        "JOBRUNNER_WORKLOADS": "gcprobe",
        "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
    }
    stack = Stack(tmp_path_factory.mktemp("probe-stack"), env_overrides=env)
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker("threads", 2)
        stack.start_worker("prefork", 2)
        stack.start_worker("gevent", 4)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
def test_the_process_running_jobs_froze_what_it_loaded_at_start(probed: Stack, pool: str) -> None:
    job_id = probed.submit("collector_state", {}, pool=pool)["id"]
    (done,) = probed.wait_for([job_id], timeout=60)
    assert done["state"] == "succeeded", done
    (worker,) = [w for w in probed.workers if w.pool == pool]
    if pool == "prefork":  # a pool process, not the worker's main process
        assert done["result"]["pid"] != worker.pid
    assert done["result"]["frozen"] >= AT_LEAST_FROZEN, done["result"]
