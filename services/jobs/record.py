"""A job record, and how it is laid out in its Redis hash and read back.

What a submission fixes once and for all travels as one JSON field, `spec`; what changes
(state, timestamps, outcome) has a hash field each, so a transition writes only those.
The store (services/jobs/store.py) keeps the hash; this module only encodes and decodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from services.core.vocabulary import JobState


class JobError(BaseModel):
    type: str = Field(..., description="Exception class, or a jobrunner reason.")
    message: str


class JobRecord(BaseModel):
    id: str
    workload: str
    params: dict[str, Any]
    pool: str
    pool_chosen_by: Literal["client", "default"] = Field(
        ..., description="'default' when the pool was picked from the workload's kind."
    )
    state: JobState
    submitted_at: float = Field(..., description="Seconds since the epoch, on the API host.")
    received_at: float | None = Field(None, description="When a worker took the message.")
    started_at: float | None = None
    finished_at: float | None = None
    worker_host: str | None = Field(None, description="Host name of the worker's machine.")
    worker_node: str | None = Field(None, description="Celery node name, e.g. gevent-1@host.")
    worker_pid: int | None = None
    attempts: int = Field(0, description="Deliveries to a worker; above 1 after a redelivery.")
    cpu_seconds: float | None = Field(None, description="CPU time of the run, on its thread.")
    result: Any = None
    error: JobError | None = None
    cancel_requested: bool = False
    max_retries: int = Field(0, description="Retries allowed after retryable failures.")
    backoff: float = Field(1.0, description="Base of the exponential backoff, seconds.")
    time_limit: int | None = Field(None, description="Seconds before the job is killed.")
    attempt_errors: list[JobError] = Field(
        default_factory=list, description="The error of every failed attempt, oldest first."
    )
    refused_writes: int = Field(
        0,
        description="Writes refused from runs that no longer held the job: the late "
        "outcome of a worker cut off past its lease, after another attempt took over.",
    )


_JSON_FIELDS = ("params", "result", "error", "attempt_errors")
# What the `spec` field holds. A new record is then three hash fields instead of one per
# field: for a batch of a thousand jobs, thousands fewer arguments for redis-py to pack
# and for Redis to store.
_SPEC_FIELDS = (
    "id", "workload", "params", "pool", "pool_chosen_by", "submitted_at", "max_retries",
    "backoff", "time_limit",
)  # fmt: skip
# What a new record may carry: its spec and its first state. Outcomes come by transitions.
CREATABLE_FIELDS = frozenset({*_SPEC_FIELDS, "state"})
# Fields the store keeps for itself: the index score, when the message was last sent
# again by services/jobs/reconcile.py, until when the running worker holds the job, and the
# Celery task id of its current message.
STORE_ONLY_FIELDS = frozenset({"score", "dispatched_at", "lease_until", "task_id"})


# Each field with the default a record leaves out of its hash (the decoder fills it in;
# the scripts read a missing `attempts` or `lease_until` as 0), computed once: a
# default_factory is called here. A required field's sentinel never matches.
_NO_DEFAULT = object()
_DEFAULTS = {
    name: field.get_default(call_default_factory=True) if not field.is_required() else _NO_DEFAULT
    for name, field in JobRecord.model_fields.items()
}
_SPEC_DEFAULTS = tuple((name, _DEFAULTS[name]) for name in _SPEC_FIELDS)
_CHANGING_DEFAULTS = tuple(item for item in _DEFAULTS.items() if item[0] not in _SPEC_FIELDS)


def _set_fields(record: JobRecord, defaults: tuple[tuple[str, Any], ...]) -> Iterator[tuple]:
    """(name, value) of the fields among `defaults` that the record sets. Read off the
    instance rather than through model_dump: a batch encodes a thousand records."""
    values = record.__dict__
    for name, default in defaults:
        value = values[name]
        if value is not None and value != default:
            yield name, value


def encode_record(record: JobRecord) -> dict[str, str]:
    """The hash a record is stored as: its spec, and each changing field as a transition
    writes it."""
    changing = _set_fields(record, _CHANGING_DEFAULTS)
    return {"spec": spec_json(record), **{name: field_value(name, v) for name, v in changing}}


def spec_json(record: JobRecord) -> str:
    return _dumps(dict(_set_fields(record, _SPEC_DEFAULTS)))


def _dumps(value: Any) -> str:
    # orjson: far faster than json.dumps, and a batch encodes a thousand specs. It
    # refuses integers past 64 bits, which JSON (and a noop's value) may hold; and it
    # would read them back as floats, so reading stays with json.loads.
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


def decode_record(raw: dict[str, str]) -> JobRecord:
    # An empty string is a field cleared by a transition (a retried job's finished_at).
    data: dict[str, Any] = {k: v for k, v in raw.items() if k not in STORE_ONLY_FIELDS and v != ""}
    for name in _JSON_FIELDS:
        if name in data:
            data[name] = json.loads(data[name])
    data["cancel_requested"] = data.get("cancel_requested") == "1"
    if "spec" in data:  # records written before `spec` have every field on its own
        data.update(json.loads(data.pop("spec")))
    return JobRecord.model_validate(data)


def index_score(submitted_at: float) -> int:
    """The index score of a job: its submission time in microseconds."""
    return int(submitted_at * 1_000_000)


def field_value(name: str, value: Any) -> str:
    """How one field is written into the hash: JSON for structured fields, "" for None."""
    if value is None and name not in _JSON_FIELDS:
        return ""
    if name in _JSON_FIELDS:
        return _dumps(_jsonable(value))
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def as_text(raw: Any) -> Any:
    """Redis replies as str, whatever the client decodes."""
    if isinstance(raw, bytes):
        return raw.decode()
    if isinstance(raw, dict):
        return {as_text(k): as_text(v) for k, v in raw.items()}
    return raw
