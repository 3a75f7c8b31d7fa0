"""The Celery app the worker runs: `celery -A worker.app worker …` (see worker/profiles.py)."""

from services.broker import get_celery

app = get_celery()

# Registers the task on `app`.
import worker.reconciler  # noqa: E402
import worker.tasks  # noqa: E402, F401
