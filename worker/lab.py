"""The lab's task: run one experiment (services/lab.py) on the lab worker."""

from __future__ import annotations

from functools import lru_cache

import redis

from services.broker import RUN_EXPERIMENT_TASK, get_celery
from services.experiments import ExperimentStore
from services.lab import run_experiment
from services.settings import get_settings
from worker.tasks import job_store

app = get_celery()


@lru_cache(maxsize=1)
def experiment_store() -> ExperimentStore:
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    return ExperimentStore(client, settings.job_result_ttl)


@app.task(name=RUN_EXPERIMENT_TASK)
def run_experiment_task(experiment_id: str) -> str:
    experiment = run_experiment(experiment_id, job_store(), experiment_store(), app)
    return experiment.state
