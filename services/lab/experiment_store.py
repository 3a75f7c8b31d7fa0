"""Experiments in Redis: each one a JSON document with the record's TTL, and an index of
them by creation time."""

from __future__ import annotations

import time
import uuid

import redis

from services.core import redis_keys
from services.lab.experiments import STORED, Experiment, ExperimentRequest, TargetProgress


class ExperimentStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds

    def create(self, request: ExperimentRequest) -> Experiment:
        experiment = Experiment(
            id=str(uuid.uuid4()),
            state="queued",
            created_at=time.time(),
            request=request,
            progress={name: TargetProgress(total=request.count) for _, name in request.targets},
        )
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(redis_keys.experiment(experiment.id), experiment.model_dump_json(), ex=self.ttl)
        pipe.zadd(redis_keys.experiment_index(), {experiment.id: experiment.created_at})
        pipe.zremrangebyscore(redis_keys.experiment_index(), "-inf", time.time() - self.ttl)
        pipe.execute()
        return experiment

    def save(self, experiment: Experiment) -> None:
        self.redis.set(
            redis_keys.experiment(experiment.id), experiment.model_dump_json(), ex=self.ttl
        )

    def get(self, experiment_id: str) -> Experiment | None:
        raw = self.redis.get(redis_keys.experiment(experiment_id))
        return Experiment.model_validate_json(raw, context=STORED) if raw else None

    def delete(self, experiment_id: str) -> None:
        self.redis.delete(redis_keys.experiment(experiment_id))
        self.redis.zrem(redis_keys.experiment_index(), experiment_id)

    def recent(self, limit: int = 50) -> list[Experiment]:
        ids = self.redis.zrange(redis_keys.experiment_index(), 0, limit - 1, desc=True)
        pipe = self.redis.pipeline(transaction=False)
        for experiment_id in ids:
            pipe.get(redis_keys.experiment(experiment_id))
        return [
            Experiment.model_validate_json(raw, context=STORED) for raw in pipe.execute() if raw
        ]
