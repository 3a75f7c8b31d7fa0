"""Stock Celery, as a user would write it: defaults, a Redis broker and result backend,
JSON (Celery's default serializer), two tasks. The baseline every figure is divided by."""

import os
import time

from celery import Celery

url = os.environ["REDIS_URL"]
app = Celery("stock", broker=url, backend=url)


@app.task(name="stock.noop")
def noop(value=None):
    return value


@app.task(name="stock.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds
