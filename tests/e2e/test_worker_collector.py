"""The process that runs a worker's jobs, on every pool, has what it loaded at start frozen
out of the garbage collector (worker/collector.py): a job reads its own process's frozen
count through a workload of a module written for the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack import Stack, workload_module

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
    env = workload_module(tmp_path_factory.mktemp("probe-module"), "gcprobe", PROBE)
    with Stack(tmp_path_factory.mktemp("probe-stack"), env_overrides=env).running(
        [("threads", 2), ("prefork", 2), ("gevent", 4)]
    ) as stack:
        yield stack


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent"])
def test_the_process_running_jobs_froze_what_it_loaded_at_start(probed: Stack, pool: str) -> None:
    job_id = probed.submit("collector_state", {}, pool=pool)["id"]
    (done,) = probed.wait_for([job_id], timeout=60)
    assert done["state"] == "succeeded", done
    (worker,) = [w for w in probed.workers if w.pool == pool]
    if pool == "prefork":  # a pool process, not the worker's main process
        assert done["result"]["pid"] != worker.pid
    assert done["result"]["frozen"] >= AT_LEAST_FROZEN, done["result"]
