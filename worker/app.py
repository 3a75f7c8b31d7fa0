"""The Celery app the worker runs: `celery -A worker.app worker …` (see worker/profiles.py)."""

from services.broker.celery_app import get_celery
from services.core.settings import get_settings

app = get_celery()
# How long a stopping worker lets running jobs finish (see worker/__main__.py).
app.conf.worker_soft_shutdown_timeout = get_settings().job_shutdown_grace

# Registers the task on `app`.
import worker.collector  # noqa: E402  (frozen start-up objects)
import worker.experiments  # noqa: E402
import worker.reconciler  # noqa: E402
import worker.self_report  # noqa: E402  (its remote-control commands)
import worker.task_logs  # noqa: E402  (Celery's per-task lines at DEBUG only)
import worker.tasks  # noqa: E402, F401
