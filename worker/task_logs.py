"""Celery's two log lines a job ("Task … received", "Task … succeeded in …") only when
WORKER_LOGLEVEL is DEBUG.

At INFO a Celery worker writes both for every task, and jobrunner's job record already
holds what they say (state, worker, pid, times, result, attempts). Measured with
`bench/pool_run.py --pool gevent --concurrency 100 --workload noop --jobs 3000 --loglevel`,
two alternating pairs: 1,965-2,017 jobs/s and 0.46-0.48 ms of worker CPU a job with them,
2,449-2,627 jobs/s and 0.35-0.37 ms without. jobrunner's own INFO lines (a job not run,
an outcome refused, a lease lost) are not Celery's task lines and stay.

Celery decides whether to write them when it builds a task's tracer and the consumer's
strategy, after its logging is set up: the level is set here, as soon as it is.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger

# The loggers of Celery's per-task lines: the message received (the consumer's strategy)
# and the task's end (its tracer: succeeded, retry; failures log at ERROR and stay).
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@after_setup_logger.connect
def per_task_lines_at_debug_only(loglevel: int | str | None = None, **_: Any) -> None:
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    if isinstance(level, int) and level <= logging.DEBUG:
        return
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, level or logging.WARNING))
