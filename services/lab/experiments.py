"""Experiments: one workload on several pools and local executors, measured and explained.

The request is validated here; the run happens on the experiment worker
(worker/experiments.py), one target at a time; the record (state, progress per target,
report) lives in Redis (services/lab/experiment_store.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from services.catalog.pools import pool_cannot_run
from services.catalog.workloads import CATALOG, WorkloadName, get_workload, resolve_name
from services.core.json_numbers import WHOLE_FLOATS_AS_INT
from services.core.vocabulary import ExperimentState, PoolName, WorkloadKind
from services.lab.executors import LOCAL_EXECUTORS
from services.lab.metrics import TargetReport

LocalTarget = Literal[LOCAL_EXECUTORS]  # type: ignore[valid-type]

# Validation context of an experiment read back from Redis: its request was checked when
# it was accepted, against the catalog of that time; a later catalog (a workload module
# removed from JOBRUNNER_WORKLOADS) must not make past experiments unreadable.
STORED = {"stored": True}


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("stored"))


def _as_strict_as_validation(schema: dict[str, Any]) -> None:
    """What the validators check, said in the schema too, so that a request the document
    allows is one the endpoint takes: at least one target, and each workload's params
    (as its own schema; one with nested models of its own stays a plain object)."""
    schema["anyOf"] = [
        {"required": ["pools"], "properties": {"pools": {"minItems": 1}}},
        {"required": ["local"], "properties": {"local": {"minItems": 1}}},
    ]
    by_workload = []
    for name, entry in CATALOG.items():
        params = entry.params.model_json_schema()
        if "$defs" in params:
            continue
        then: dict[str, Any] = {"properties": {"params": params}}
        if params.get("required"):
            then["required"] = ["params"]  # left out, params is {}: missing what it needs
        by_workload.append(
            {"if": {"properties": {"workload": {"const": name}}, "required": ["workload"]},
             "then": then}
        )  # fmt: skip
    schema["allOf"] = by_workload


class ExperimentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_as_strict_as_validation)
    workload: WorkloadName = Field(
        ...,
        description="A workload of the catalog (GET /workloads), by name or by its "
        "`module:function` ref; the experiment records the name.",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    count: Annotated[
        int, Field(ge=1, le=5_000, strict=True, description="Jobs per target."),
        WHOLE_FLOATS_AS_INT,
    ]  # fmt: skip
    # Each target once, and at least one target: what _targets checks, said in the schema
    # too, so a client generated from the document cannot build a request it refuses.
    pools: list[PoolName] = Field(default_factory=list, json_schema_extra={"uniqueItems": True})
    local: list[LocalTarget] = Field(
        default_factory=list,
        description="Local executors, with max_workers = concurrency.",
        json_schema_extra={"uniqueItems": True},
    )
    concurrency: Annotated[
        int,
        Field(ge=1, le=1_000, strict=True,
              description="Of the local executors; the pools run with their workers' concurrency."),
        WHOLE_FLOATS_AS_INT,
    ] = 8  # fmt: skip

    @field_validator("workload", mode="wrap")
    @classmethod
    def _in_catalog(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> str:
        """A catalog name, or the name of the workload a `module:function` ref is; the
        422 of any other lists the catalog."""
        if _stored(info) and isinstance(value, str):
            return value
        if isinstance(value, str) and resolve_name(value) in CATALOG:
            return handler(resolve_name(value))
        raise PydanticCustomError(
            "unknown_workload",
            "no workload {workload} in the catalog; it has: {names} (or the "
            "module:function ref of one, as GET /workloads lists them)",
            {"workload": repr(value)[:80], "names": ", ".join(sorted(CATALOG))},
        )

    @field_validator("pools")
    @classmethod
    def _pools_can_run_it(cls, pools: list[str], info: ValidationInfo) -> list[str]:
        """A pool that cannot run the workload (an async one on gevent) is refused here,
        not measured: its jobs would fail or run one at a time."""
        workload = info.data.get("workload")
        if _stored(info) or workload is None:
            return pools
        for pool in pools:
            why = pool_cannot_run(get_workload(workload), pool)
            if why is not None:
                raise PydanticCustomError(
                    "pool_cannot_run",
                    "{pool} cannot run {workload}: {why}; leave {pool} out, or compare "
                    "threads and prefork",
                    {"pool": pool, "workload": workload, "why": why},
                )
        return pools

    @model_validator(mode="after")
    def _targets(self) -> ExperimentRequest:
        if not self.pools and not self.local:
            raise ValueError("name at least one target in pools or local")
        for name, chosen in (("pools", self.pools), ("local", self.local)):
            if len(set(chosen)) != len(chosen):
                raise ValueError(f"{name} names a target twice")
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
    pid: int | None = Field(None, description="As the worker's own host numbers it.")
    max_rss_bytes: int | None = None
    # Said by the worker itself; None in reports stored before it was recorded.
    host: str | None = Field(None, description="The host name where the worker runs.")
    cores: int | None = Field(None, description="That host's cores.")


class HostTopology(BaseModel):
    host: str
    cores: int
    rtt_ms_to_redis: float | None = Field(
        None, description="Median round trip of a PING to Redis from there, in ms."
    )
    nodes: list[str] = Field(default_factory=list, description="The pools' workers that run there.")


class Topology(BaseModel):
    cores: int = Field(..., description="The lab's host's, where local executors run.")
    host: str = Field(..., description="The lab's host (the experiment worker's).")
    python: str
    celery: str
    redis_server: str | None
    workers: dict[str, list[WorkerTopology]] = Field(
        ..., description="Live workers per pool when the experiment started."
    )
    hosts: list[HostTopology] = Field(
        default_factory=list,
        description="Every host that took part: the lab's, and those of the workers of the "
        "pools it ran on, as each worker said. (Empty in reports stored before it was "
        "recorded.)",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def where(self) -> str:
        """Where it ran, in a line: `box (2 cores, 0.09 ms to Redis)` for one host,
        `3 hosts: …` for a cluster; in the JSON too, for clients that draw tables."""
        hosts = self.hosts or [HostTopology(host=self.host, cores=self.cores)]
        parts = []
        for h in hosts:
            lab = "lab, " if h.host == self.host and len(hosts) > 1 else ""
            rtt = f", {h.rtt_ms_to_redis:g} ms to Redis" if h.rtt_ms_to_redis is not None else ""
            parts.append(f"{h.host} ({lab}{h.cores} cores{rtt})")
        return parts[0] if len(parts) == 1 else f"{len(parts)} hosts: " + ", ".join(parts)


class ExperimentReport(BaseModel):
    workload: str
    kind: WorkloadKind
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
    services.catalog.errors.WorkloadError for a host off the allow-list)."""
    request = ExperimentRequest.model_validate(body)
    parsed = get_workload(request.workload).validate(request.params)
    return request.model_copy(update={"params": parsed.model_dump(mode="json")})
