"""gunicorn hooks for the API processes (`python -m api` passes this as its --config)."""

from __future__ import annotations

import gc
from typing import Any


def post_worker_init(worker: Any) -> None:
    # Everything loaded so far (Flask, pydantic's schemas, the app) lives as long as the
    # process: frozen, the collector stops walking it on every full collection, which
    # cuts the CPU of every large request (bench/RESULTS.md has the figure).
    gc.freeze()
