"""The experiment worker's task: run one experiment (services/lab/runner.py)."""

from __future__ import annotations

from functools import lru_cache

from services.broker.celery_app import RUN_EXPERIMENT_TASK, get_celery
from services.core.redis_clients import redis_client
from services.core.settings import get_settings
from services.lab.experiment_store import ExperimentStore
from services.lab.runner import run_experiment
from worker.tasks import job_store

app = get_celery()


@lru_cache(maxsize=1)
def experiment_store() -> ExperimentStore:
    settings = get_settings()
    return ExperimentStore(redis_client(settings.redis_url), settings.job_result_ttl)


@app.task(name=RUN_EXPERIMENT_TASK)
def run_experiment_task(experiment_id: str) -> str:
    experiment = run_experiment(experiment_id, job_store(), experiment_store(), app)
    return experiment.state
