"""A worker runs only catalog workloads: a message naming another task, or serialized
with pickle, is refused without executing anything, and the worker keeps serving."""

from __future__ import annotations

import os
import time
from pathlib import Path

from services.broker.celery_app import RUN_JOB_TASK, make_celery
from services.core.settings import Settings
from tests.stack import Stack


class Explodes:
    """Unpickling this runs a shell command: what a pickle-accepting worker would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_foreign_task_and_pickle_are_refused(stack: Stack, tmp_path: Path) -> None:
    celery = make_celery(Settings(redis_url=stack.redis_server.url))
    marker = tmp_path / "executed"
    celery.send_task("os.system", args=[f"touch {marker}"], queue="pool.threads")
    celery.send_task(
        RUN_JOB_TASK, args=[Explodes(marker)], queue="pool.threads", serializer="pickle"
    )
    # Both messages reach the worker and are dropped; a real job behind them still runs.
    behind = stack.submit("noop", {"value": "after"}, pool="threads")
    assert stack.wait_for([behind["id"]])[0]["state"] == "succeeded"
    deadline = time.monotonic() + 5
    while stack.redis().llen("pool.threads") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.redis().llen("pool.threads") == 0
    assert not marker.exists()
    logs = "".join(w.log_path.read_text() for w in stack.workers if w.pool == "threads")
    assert "unregistered task" in logs.lower()
    assert "pickle" in logs.lower()
