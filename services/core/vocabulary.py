"""The words every layer shares, defined once: job and experiment states, workload kinds,
pool names.

The CLI, the API, the workers and the tests all speak of these; here they cost no import
of Celery, Flask or the catalog, so a client can use them as freely as the server.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


# A job in one of these states never moves again on its own (a client may retry it).
FINAL_JOB_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})

ExperimentState = Literal["queued", "running", "succeeded", "failed"]
# An experiment cannot be cancelled: it ends by succeeding or failing.
FINAL_EXPERIMENT_STATES = frozenset({"succeeded", "failed"})

# What bounds a workload: waiting (I/O) or computing (CPU). The lab's ideal bound and the
# default pool follow from it.
WorkloadKind = Literal["io", "cpu"]

PoolName = Literal["threads", "prefork", "gevent"]
POOL_NAMES: tuple[str, ...] = get_args(PoolName)
