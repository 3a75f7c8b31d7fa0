"""Request and response bodies of the HTTP API; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.jobs import JobRecord, JobState
from services.pools import POOLS
from services.workloads import CATALOG

# Literal types built from the catalogs, so a 422 lists the allowed values by itself.
WorkloadName = Literal[tuple(CATALOG)]  # type: ignore[valid-type]
PoolName = Literal[tuple(POOLS)]  # type: ignore[valid-type]


class JobSubmission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workload: WorkloadName = Field(..., description="A name from GET /workloads.")
    params: dict[str, Any] = Field(default_factory=dict, description="The workload's params.")
    pool: PoolName | None = Field(
        None, description="Pool to run on; left out, the pool suited to the workload's kind."
    )
    max_retries: int = Field(
        0, ge=0, le=10, description="Retries after failures the workload marks retryable."
    )
    backoff: float = Field(
        1.0, ge=0, le=300, description="Seconds; retry n waits backoff * 2**(n-1), jittered."
    )
    time_limit: int | None = Field(
        None,
        ge=1,
        description="Seconds before the job is killed (pools with hard_time_limit only); "
        "at most JOB_MAX_TIME_LIMIT, which stays below JOB_VISIBILITY_TIMEOUT.",
    )


class JobListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: JobState | None = None
    pool: PoolName | None = None
    workload: WorkloadName | None = None
    limit: int = Field(50, ge=1, le=500)
    cursor: int | None = Field(None, ge=0, description="next_cursor of the previous page.")


class JobPage(BaseModel):
    jobs: list[JobRecord]
    next_cursor: int | None = Field(None, description="Pass as ?cursor= for the next page.")


class WorkloadInfo(BaseModel):
    name: str
    kind: Literal["io", "cpu"]
    description: str
    default_pool: str
    params_schema: dict[str, Any]


class WorkloadList(BaseModel):
    workloads: list[WorkloadInfo]


class WorkerInfo(BaseModel):
    node: str
    concurrency: int | None
    pid: int | None


class PoolCapabilities(BaseModel):
    hard_time_limit: bool
    terminate_running: bool
    memory_isolation: bool


class PoolInfo(BaseModel):
    name: str
    queue: str
    suited_to: Literal["io", "cpu"]
    capabilities: PoolCapabilities
    workers: list[WorkerInfo]
    queued: int = Field(..., description="Messages waiting in the pool's queue.")


class PoolList(BaseModel):
    pools: list[PoolInfo]


class Health(BaseModel):
    status: str


class DelayQuery(BaseModel):
    ms: int = Field(..., ge=0, le=30_000, description="Milliseconds to wait before answering.")


class DelayAnswer(BaseModel):
    waited_ms: int
