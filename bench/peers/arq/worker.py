"""arq's worker, as the `arq` command starts it (`run_worker` on the settings class),
logging warnings only: arq logs two lines a job at INFO, and every other worker here runs
at WARNING too (a log line a job measures the log file, not the queue)."""

from __future__ import annotations

import logging

from arq.worker import run_worker

from bench.peers.arq.tasks import WorkerSettings

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings)  # type: ignore[arg-type]
