"""What a worker loads at start is frozen out of Python's garbage collector.

A worker's imports and setup (Celery, kombu, redis-py, gevent, pydantic's models, the
catalog) leave about 100,000 objects that live as long as the process. The cyclic
collector walks every one of them at each full collection (a busy worker runs one every
thousand jobs or so), and walking an object writes to its header. In a prefork pool
process each such write copies a page it had shared with its parent, so every process
slowly grew its own copy of the worker: frozen, prefork's memory per slot fell by a
fifth at -c2 (59.9 → 48.2 MiB, stock Celery's 46.6) and by a third at -c4. On a gevent
worker running no-op jobs, full collections took 0.42 s of the collector's 0.69 s over
6,000 jobs, 5-10 % of its CPU, and 0.05 s since (bench/RESULTS.md, "Freezing what a
worker loads at start"). `gc.freeze()` moves them to a generation the collector never
walks; objects made by jobs are collected as before.

When: in the main process before the prefork pool forks (`worker_init`), so a pool
process inherits them frozen; again once the worker is ready (what its consumer set up
since); and in each pool process as it starts, for what it made then. The API does the
same in each gunicorn worker (api/gunicorn_conf.py).
"""

from __future__ import annotations

import gc
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready


@worker_init.connect
@worker_ready.connect
@worker_process_init.connect
def freeze_what_is_loaded(**_: Any) -> None:
    gc.freeze()
