"""Stock Celery as a user would write it: default settings, JSON, the Redis result backend.

The only changes from Celery's defaults are the ones every user must make: the broker and
backend URL, JSON, and a queue name of its own so it never meets jobrunner's messages.
"""

from __future__ import annotations

import hashlib
import os
import time

from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "stock"

app = Celery("stock", broker=URL, backend=URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)


@app.task(name="stock.noop")
def noop(value: object = None) -> object:
    return value


@app.task(name="stock.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(name="stock.cpu_hash")
def cpu_hash(rounds: int) -> str:
    # The same loop as services.workloads.cpu_hash, so both sides do the same work.
    digest = b"jobrunner"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()
