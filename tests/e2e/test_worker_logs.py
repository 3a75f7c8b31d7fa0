"""A worker at WORKER_LOGLEVEL=INFO (the default) writes jobrunner's own lines and
Celery's start-up lines, but not Celery's two lines for every task, which the job record
already holds (worker/task_logs.py: they cost a quarter of a short job's throughput); at
DEBUG they are back."""

from __future__ import annotations

import logging

import pytest

from tests.stack import Stack
from worker.task_logs import PER_TASK_LOGGERS, per_task_lines_at_debug_only


def test_a_job_leaves_no_per_task_line_at_info(stack: Stack) -> None:
    (worker,) = [w for w in stack.workers if w.pool == "threads"]
    job_id = stack.submit("noop", {"value": 7}, pool="threads")["id"]
    (done,) = stack.wait_for([job_id])
    assert done["state"] == "succeeded" and done["worker_node"] == worker.node
    log = worker.log_path.read_text(errors="replace")
    assert " ready." in log  # Celery's INFO lines are written...
    assert job_id not in log  # ...but neither "received" nor "succeeded in" for the job


@pytest.mark.parametrize(
    ("loglevel", "expected"),
    [("INFO", logging.WARNING), ("WARNING", logging.WARNING), ("ERROR", logging.ERROR),
     ("DEBUG", logging.NOTSET), (logging.DEBUG, logging.NOTSET)],
)  # fmt: skip
def test_the_per_task_loggers_follow_the_worker_level(loglevel: str | int, expected: int) -> None:
    loggers = [logging.getLogger(name) for name in PER_TASK_LOGGERS]
    saved = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.NOTSET)
        per_task_lines_at_debug_only(loglevel=loglevel)
        assert [logger.level for logger in loggers] == [expected] * len(loggers)
    finally:
        for logger, level in zip(loggers, saved, strict=True):
            logger.setLevel(level)
