"""Request and response bodies of the HTTP API; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, RootModel, TypeAdapter, create_model

from services.catalog.workloads import CATALOG, Workload, WorkloadName
from services.core.json_numbers import WHOLE_FLOATS_AS_INT
from services.core.vocabulary import JobState, PoolName, WorkloadKind
from services.jobs.record import JobRecord
from services.lab.experiments import Experiment, HostTopology

# Jobs in one POST /jobs/batch.
MAX_BATCH_JOBS = 1_000


class JobOptions(BaseModel):
    """What every submission may say besides its workload and params. Strict: `false` is
    not a number of retries."""

    model_config = ConfigDict(extra="forbid")
    pool: PoolName | None = Field(
        None, description="Pool to run on; left out, the pool suited to the workload's kind."
    )
    max_retries: Annotated[
        int,
        Field(ge=0, le=10, strict=True,
              description="Retries after failures the workload marks retryable (left out: "
              "the workload's own default)."),
        WHOLE_FLOATS_AS_INT,
    ] = 0  # fmt: skip
    backoff: float = Field(
        1.0, ge=0, le=300, strict=True,
        description="Seconds; retry n waits up to backoff * 2**(n-1) (full jitter). The "
        "last retry's bound, backoff * 2**(max_retries-1), must stay below "
        "JOB_VISIBILITY_TIMEOUT and JOB_RESULT_TTL.",
    )  # fmt: skip
    time_limit: Annotated[
        int | None,
        Field(ge=1, strict=True,
              description="Seconds before the job is killed (pools with hard_time_limit "
              "only); at most JOB_MAX_TIME_LIMIT, which stays below JOB_VISIBILITY_TIMEOUT. "
              "Left out: the workload's own default; null: none."),
        WHOLE_FLOATS_AS_INT,
    ] = None  # fmt: skip


def _submission_model(workload: Workload) -> type[JobOptions]:
    """`{workload: "<name>", params: <its model>, ...options}` for one catalog entry, so
    the OpenAPI document tells a client exactly which params each workload takes."""
    needs_params = any(field.is_required() for field in workload.params.model_fields.values())
    params: Any = (
        (workload.params, ...)
        if needs_params
        else (workload.params, Field(default_factory=workload.params))
    )
    title = "".join(part.title() for part in workload.name.split("_"))
    return create_model(
        f"{title}Job",
        __base__=JobOptions,
        __doc__=f"A {workload.name} job: {workload.description}",
        workload=(Literal[workload.name], ...),  # type: ignore[valid-type]
        params=params,
    )


_SUBMISSIONS = tuple(_submission_model(w) for w in CATALOG.values())
# One of the catalog's submissions, told apart by `workload`.
AnySubmission = Annotated[Union[_SUBMISSIONS], Field(discriminator="workload")]  # type: ignore[valid-type]  # noqa: UP007


class JobSubmission(RootModel):
    """A job to run: one of the catalog's workloads with its params, told apart by
    `workload` (a discriminator, so a 422 names the allowed workloads)."""

    root: AnySubmission


class BatchSubmission(BaseModel):
    jobs: list[JobSubmission] = Field(..., min_length=1, max_length=MAX_BATCH_JOBS)


# The items of a batch validated in one call into pydantic-core, without a model per item.
BatchItems = TypeAdapter(list[AnySubmission])


class BatchAccepted(BaseModel):
    jobs: list[JobRecord]


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
    kind: WorkloadKind
    description: str
    default_pool: str
    is_async: bool = Field(False, description="An async def: runs on threads and prefork.")
    ref: str = Field("", description="module:function, a name the lab accepts too.")
    params_schema: dict[str, Any]
    pools: list[str] = Field(
        default_factory=list,
        description="The pools that can run it (an async workload: not gevent, whose "
        "greenlets share one thread and so one event loop).",
    )
    local_executors: list[str] = Field(
        ...,
        description="The lab's local executors that can run it (asyncio runs an async "
        "workload natively, a plain one in threads).",
    )


class WorkloadList(BaseModel):
    workloads: list[WorkloadInfo]
    fingerprint: str = Field(
        "",
        description="Hash of every name, kind and params schema; /pools shows each "
        "worker's, so a worker with another catalog stands out.",
    )


class WorkerInfo(BaseModel):
    node: str
    concurrency: int | None
    pid: int | None = Field(None, description="As the worker's own host numbers it.")
    host: str | None = Field(
        None, description="Where the worker runs, as it says (None: it gave no report)."
    )
    cores: int | None = Field(None, description="That host's cores.")
    rtt_ms_to_redis: float | None = Field(
        None, description="The worker's median round trip to Redis, in ms."
    )
    catalog: str | None = Field(
        None,
        description="The fingerprint of the worker's workload catalog (None: it gave no "
        "report). Equal to /workloads' fingerprint when it runs every job the API accepts.",
    )
    catalog_matches: bool | None = Field(
        None, description="Whether `catalog` is the API's (None: not known)."
    )


class CatalogMismatch(BaseModel):
    """A worker whose workload catalog is not the API's: started with other
    JOBRUNNER_WORKLOADS, or another version of a workload's package."""

    worker: str = Field(..., description="Its Celery node name.")
    catalog: str = Field(..., description="Its catalog's fingerprint.")
    missing: list[str] = Field(
        ...,
        description="Workloads the API accepts and this worker lacks: their jobs fail on it "
        "with error.type workload_not_on_worker.",
    )
    extra: list[str] = Field(
        ..., description="Workloads this worker has and the API does not (no job asks for them)."
    )
    changed: list[str] = Field(
        ...,
        description="Workloads in both whose kind, async-ness or params schema differ: a job "
        "the API accepts may fail validation on this worker.",
    )


class PoolCapabilities(BaseModel):
    hard_time_limit: bool
    terminate_running: bool
    memory_isolation: bool


class PoolInfo(BaseModel):
    name: str
    queue: str
    suited_to: WorkloadKind
    capabilities: PoolCapabilities
    workers: list[WorkerInfo]
    queued: int = Field(..., description="Messages waiting in the pool's queue.")
    catalog_matches: bool = Field(
        True, description="No worker of this pool is known to have another catalog than the API."
    )
    catalog_mismatch: list[CatalogMismatch] = Field(
        default_factory=list, description="Its workers whose catalog differs, and how."
    )


class PoolList(BaseModel):
    pools: list[PoolInfo]
    catalog: str = Field("", description="The API's catalog fingerprint (as /workloads says).")
    catalog_matches: bool = Field(
        True, description="No live worker is known to have another catalog than the API."
    )
    catalog_mismatch: list[CatalogMismatch] = Field(
        default_factory=list,
        description="Every worker whose catalog differs, once each (a worker may serve "
        "several pools).",
    )


class Health(BaseModel):
    status: str


class DelayQuery(BaseModel):
    ms: int = Field(..., ge=0, le=30_000, description="Milliseconds to wait before answering.")


class DelayAnswer(BaseModel):
    waited_ms: int


class ExperimentList(BaseModel):
    experiments: list[Experiment]


class ComparisonRow(BaseModel):
    target: str
    throughput_per_s: dict[str, float | None] = Field(..., description="By experiment id.")
    ratio_last_to_first: float | None
    latency_p50_s: dict[str, float | None] = Field(
        default_factory=dict, description="By experiment id."
    )
    peak_rss_bytes: dict[str, int | None] = Field(
        default_factory=dict, description="By experiment id."
    )
    efficiency: dict[str, float | None] = Field(
        default_factory=dict, description="Against the ideal bound, by experiment id."
    )


class ComparisonRun(BaseModel):
    """Which run is which: where each experiment ran, so that a local run and a cluster
    run of the same workload are told apart."""

    id: str
    workload: str
    params: dict[str, Any]
    count: int
    where: str = Field(..., description="Its hosts in a line, with cores and RTT to Redis.")
    hosts: list[HostTopology]


class Comparison(BaseModel):
    experiments: list[Experiment]
    runs: list[ComparisonRun] = Field(default_factory=list, description="In the order asked.")
    rows: list[ComparisonRow]


class ExperimentListQuery(BaseModel):
    limit: int = Field(20, ge=1, le=200)


class CompareQuery(BaseModel):
    # The pattern is the route's own rule (two ids or more), so the document allows only
    # what the endpoint takes.
    ids: str = Field(
        ...,
        pattern=r"^[^,]+(,[^,]+)+$",
        description="Two or more comma-separated experiment ids, e.g. ?ids=a,b",
    )
