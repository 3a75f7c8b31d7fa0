"""A prefork pool process's memory limit: a job that allocates past it fails, the process
and its pool go on.

Celery's `--max-memory-per-child` only acts *after* a job (the process is replaced once
its resident memory is above the bound), so a job that allocates 10 GB still takes the
host's memory, and the kernel's OOM killer may take the whole worker. A limit on the
process's data segment (RLIMIT_DATA: heap and private anonymous mappings, which is where
Python's objects and large buffers live) makes the allocation itself fail with
MemoryError, inside the job, which is recorded as `error.type = "memory_limit"`.

Only a prefork pool process runs one job at a time: on threads and gevent every job
shares one process, so a limit would fail whichever allocation came next, in any job or
in the worker itself. There a job's memory is the worker's (docs/operations.md).
"""

from __future__ import annotations

import resource

MIB = 1024 * 1024

# Set in a pool process by install(): the limit in MiB, or None.
LIMIT_MIB: int | None = None


def install(limit_mib: int | None) -> None:
    """Limit this process's data segment to `limit_mib` MiB (None: no limit)."""
    global LIMIT_MIB
    if limit_mib is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = limit_mib * MIB
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    LIMIT_MIB = limit_mib


def is_memory_limit(exc: BaseException) -> bool:
    """A MemoryError in a process whose limit install() set: the job went past it."""
    return LIMIT_MIB is not None and isinstance(exc, MemoryError)


def describe(exc: BaseException) -> str:
    return (
        f"the job allocated past WORKER_MEMORY_LIMIT_PREFORK ({LIMIT_MIB} MiB per pool "
        f"process): {type(exc).__name__}: {exc}"
    )
