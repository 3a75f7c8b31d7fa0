"""Experiments: one workload on several pools and local executors, measured and explained.

The request is validated here; the run happens on the lab worker (worker/lab.py), one
target at a time; the record (state, progress per target, report) lives in Redis.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services import keys
from services.executors import LOCAL_EXECUTORS, supports_asyncio
from services.pools import POOLS
from services.report import TargetReport
from services.workloads import CATALOG, get_workload

PoolTarget = Literal[tuple(POOLS)]  # type: ignore[valid-type]
LocalTarget = Literal[LOCAL_EXECUTORS]  # type: ignore[valid-type]
WorkloadName = Literal[tuple(CATALOG)]  # type: ignore[valid-type]
ExperimentState = Literal["queued", "running", "succeeded", "failed"]


class ExperimentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workload: WorkloadName
    params: dict[str, Any] = Field(default_factory=dict)
    count: int = Field(..., ge=1, le=5_000, strict=True, description="Jobs per target.")
    pools: list[PoolTarget] = Field(default_factory=list)
    local: list[LocalTarget] = Field(
        default_factory=list, description="Local executors, with max_workers = concurrency."
    )
    concurrency: int = Field(
        8, ge=1, le=1_000, strict=True,
        description="Of the local executors; the pools run with their workers' concurrency.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _targets(self) -> ExperimentRequest:
        if not self.pools and not self.local:
            raise ValueError("name at least one target in pools or local")
        for name, chosen in (("pools", self.pools), ("local", self.local)):
            if len(set(chosen)) != len(chosen):
                raise ValueError(f"{name} names a target twice")
        if "asyncio" in self.local and not supports_asyncio(self.workload):
            raise ValueError(
                f"asyncio is not offered for {self.workload!r}: a CPU-bound coroutine never "
                "awaits, so it is sequential code; compare processpool or prefork instead"
            )
        return self

    @property
    def targets(self) -> list[tuple[Literal["pool", "local"], str]]:
        return [("pool", p) for p in self.pools] + [("local", e) for e in self.local]


class TargetProgress(BaseModel):
    done: int = 0
    total: int


class WorkerTopology(BaseModel):
    node: str
    concurrency: int
    pid: int | None = None
    max_rss_bytes: int | None = None


class Topology(BaseModel):
    cores: int
    host: str
    python: str
    celery: str
    redis_server: str | None
    workers: dict[str, list[WorkerTopology]] = Field(
        ..., description="Live workers per pool when the experiment started."
    )


class ExperimentReport(BaseModel):
    workload: str
    kind: Literal["io", "cpu"]
    params: dict[str, Any]
    count: int
    concurrency: int
    job_seconds: float = Field(..., description="The duration (io) or CPU time (cpu) of one job.")
    topology: Topology
    targets: list[TargetReport]
    verdict: list[str]


class Experiment(BaseModel):
    id: str
    state: ExperimentState
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    request: ExperimentRequest
    progress: dict[str, TargetProgress]
    report: ExperimentReport | None = None
    error: str | None = None


def validate_request(body: dict[str, Any]) -> ExperimentRequest:
    """The request, its workload's params checked too (pydantic.ValidationError, or
    services.workloads.WorkloadError for a host off the allow-list)."""
    request = ExperimentRequest.model_validate(body)
    parsed = get_workload(request.workload).validate(request.params)
    return request.model_copy(update={"params": parsed.model_dump(mode="json")})


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
        pipe.set(keys.experiment(experiment.id), experiment.model_dump_json(), ex=self.ttl)
        pipe.zadd(keys.experiment_index(), {experiment.id: experiment.created_at})
        pipe.zremrangebyscore(keys.experiment_index(), "-inf", time.time() - self.ttl)
        pipe.execute()
        return experiment

    def save(self, experiment: Experiment) -> None:
        self.redis.set(keys.experiment(experiment.id), experiment.model_dump_json(), ex=self.ttl)

    def get(self, experiment_id: str) -> Experiment | None:
        raw = self.redis.get(keys.experiment(experiment_id))
        return Experiment.model_validate_json(raw) if raw else None

    def delete(self, experiment_id: str) -> None:
        self.redis.delete(keys.experiment(experiment_id))
        self.redis.zrem(keys.experiment_index(), experiment_id)

    def recent(self, limit: int = 50) -> list[Experiment]:
        ids = self.redis.zrange(keys.experiment_index(), 0, limit - 1, desc=True)
        pipe = self.redis.pipeline(transaction=False)
        for experiment_id in ids:
            pipe.get(keys.experiment(experiment_id))
        return [Experiment.model_validate_json(raw) for raw in pipe.execute() if raw]
