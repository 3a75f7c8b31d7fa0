"""The job record and its store in Redis.

A record is one Redis hash (`keys.job(id)`) with the job's TTL (what the submission fixed
in one JSON field, what changes in a field each), plus its id in sorted sets
scored by submission time: one for all jobs and one per pool, workload and state, so a
filtered, paged listing reads only the ids it returns (its cost does not grow with the
number of stored jobs). State changes are Lua scripts, so the API and a worker never both
win a race (a cancel and a start, say).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, Literal

import orjson
import redis
from pydantic import BaseModel, Field

from services import keys


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


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


_JSON_FIELDS = ("params", "result", "error", "attempt_errors")
# What a submission fixes once and for all travels as one JSON field, `spec`; what changes
# (state, timestamps, outcome) has a hash field each, so a transition writes only those.
# A new record is then three hash fields instead of nine: for a batch of a thousand jobs
# that is 10,000 fewer arguments for redis-py to pack and for Redis to store.
_SPEC_FIELDS = (
    "id", "workload", "params", "pool", "pool_chosen_by", "submitted_at", "max_retries",
    "backoff", "time_limit",
)  # fmt: skip
# What a new record may carry: its spec and its first state. Outcomes come by transitions.
_CREATABLE = frozenset({*_SPEC_FIELDS, "state"})
# Fields the store keeps for itself: the index score, when the message was last sent
# again by services.reconcile, until when the running worker holds the job, and the
# Celery task id of its current message.
_STORE_ONLY = frozenset({"score", "dispatched_at", "lease_until", "task_id"})


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


def _encode(record: JobRecord) -> dict[str, str]:
    """The hash a record is stored as: its spec, and each changing field as a transition
    writes it."""
    changing = _set_fields(record, _CHANGING_DEFAULTS)
    return {"spec": _spec_json(record), **{name: _field_value(name, v) for name, v in changing}}


def _spec_json(record: JobRecord) -> str:
    return _dumps(dict(_set_fields(record, _SPEC_DEFAULTS)))


def _dumps(value: Any) -> str:
    # orjson: a tenth of json.dumps's time, and a batch encodes a thousand specs. It
    # refuses integers past 64 bits, which JSON (and a noop's value) may hold; and it
    # would read them back as floats, so reading stays with json.loads.
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


def _decode(raw: dict[str, str]) -> JobRecord:
    # An empty string is a field cleared by a transition (a retried job's finished_at).
    data: dict[str, Any] = {k: v for k, v in raw.items() if k not in _STORE_ONLY and v != ""}
    for name in _JSON_FIELDS:
        if name in data:
            data[name] = json.loads(data[name])
    data["cancel_requested"] = data.get("cancel_requested") == "1"
    if "spec" in data:  # records written before `spec` have every field on its own
        data.update(json.loads(data.pop("spec")))
    return JobRecord.model_validate(data)


def _score(submitted_at: float) -> int:
    return int(submitted_at * 1_000_000)


# Moves a job from one of the allowed states to a new one, setting fields as it goes, and
# keeps the per-state index in step. running -> running (a redelivery taking over) needs
# the running worker's lease to have expired. ARGV[4] holds flags: 'a' counts an attempt,
# 'r' returns the record as it is after the move (saves the worker a round trip), 'e'
# starts the record's TTL (ARGV[6] seconds) again, so a job sent once more (a retry)
# cannot expire before it runs. ARGV[5] is the time now; fields follow from ARGV[7].
# Returns {moved (1/0), previous state[, record]}, or nil when the record does not exist
# (expired, or never accepted). Every Redis call here counts against the job's cost (the
# benchmark's commands per job), so the record is read once and written once.
_TRANSITION = """
local rec = {}
if string.find(ARGV[4], 'r') then
  local raw = redis.call('HGETALL', KEYS[1])
  for i = 1, #raw, 2 do rec[raw[i]] = raw[i + 1] end
else
  local got = redis.call('HMGET', KEYS[1], 'state', 'score', 'lease_until', 'attempts')
  rec = {state = got[1], score = got[2], lease_until = got[3], attempts = got[4]}
end
local state = rec['state']
if not state then return false end
local allowed = false
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == state then allowed = true end
end
if not allowed then return {0, state} end
local id, new_state = ARGV[2], ARGV[3]
if state == 'running' and new_state == 'running' then
  -- Taking over a running job: only once the worker running it stopped renewing its lease.
  if tonumber(rec['lease_until'] or '0') > tonumber(ARGV[5]) then return {0, state} end
end
local sets = {'state', new_state}
if string.find(ARGV[4], 'a') then
  sets[3], sets[4] = 'attempts', tostring(tonumber(rec['attempts'] or '0') + 1)
end
for i = 7, #ARGV do sets[#sets + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(sets))
if string.find(ARGV[4], 'e') then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
if state ~= new_state then
  redis.call('ZREM', KEYS[2] .. state, id)
  redis.call('ZADD', KEYS[2] .. new_state, rec['score'], id)
end
if string.find(ARGV[4], 'r') then
  for i = 1, #sets, 2 do rec[sets[i]] = sets[i + 1] end
  local flat = {}
  for k, v in pairs(rec) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  return {1, state, flat}
end
return {1, state}
"""


# Creates records (HSET + EXPIRE each), adds them to their indexes and pushes their
# messages, from flat arguments:
#   ttl, the job key prefix, the all-jobs index, the pool / workload / state index
#   prefixes, the number of records; per record: id, score, state, pool, workload, spec;
#   then per queue: the number of payloads, the list key, the payloads.
# Flat arguments cost Redis nothing to read (a JSON document of the same batch took cjson
# longer to decode than all the commands took to run), and the index entries are built
# here rather than sent: 8,000 fewer arguments for a batch of 1,000. Key names come from
# services/keys.py as prefixes.
_CREATE = """
local ttl, job_prefix, all_index = ARGV[1], ARGV[2], ARGV[3]
local pool_prefix, workload_prefix, state_prefix = ARGV[4], ARGV[5], ARGV[6]
local count = tonumber(ARGV[7])
local members, sizes = {}, {}
local function index(name, score, id)
  local list = members[name]
  if not list then list = {}; members[name] = list; sizes[name] = 0 end
  local n = sizes[name]
  list[n + 1], list[n + 2] = score, id
  sizes[name] = n + 2
end
local i = 8
for _ = 1, count do
  local id, score, state = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = job_prefix .. id
  redis.call('HSET', key, 'state', state, 'score', score, 'spec', ARGV[i + 5])
  redis.call('EXPIRE', key, ttl)
  index(all_index, score, id)
  index(pool_prefix .. ARGV[i + 3], score, id)
  index(workload_prefix .. ARGV[i + 4], score, id)
  index(state_prefix .. state, score, id)
  i = i + 6
end
for name, list in pairs(members) do redis.call('ZADD', name, unpack(list)) end
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('LPUSH', unpack(ARGV, i + 1, i + 1 + n))
  i = i + n + 2
end
return count
"""


class JobStore:
    """Job records in one Redis database."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._transition = client.register_script(_TRANSITION)
        self._create = client.register_script(_CREATE)

    # -- writing -----------------------------------------------------------------------

    def create(self, record: JobRecord, pipe: redis.client.Pipeline | None = None) -> None:
        """Store a new record and index it; inside `pipe` when the caller batches."""
        self.create_many([record], pipe=pipe)

    def create_many(
        self,
        records: list[JobRecord],
        messages: dict[str, list[str]] | None = None,
        pipe: redis.client.Pipeline | None = None,
    ) -> None:
        """Store new records, index them and LPUSH `messages` ({list key: payloads}) in one
        script: atomic, one round trip. (As a MULTI of separate commands, redis-py spent
        more time packing a thousand commands and parsing their replies than Redis took to
        run them.) A new record holds its spec and its state; outcomes come later, by
        transitions."""
        args: list[Any] = [
            self.ttl, keys.job(""), keys.job_index(), keys.job_index("pool", ""),
            keys.job_index("workload", ""), keys.job_index("state", ""), len(records),
        ]  # fmt: skip
        for record in records:
            if not record.model_fields_set <= _CREATABLE:
                extra = sorted(record.model_fields_set - _CREATABLE)
                raise ValueError(f"a new record carries only its spec and state, not {extra}")
            args += (
                record.id, _score(record.submitted_at), record.state.value, record.pool,
                record.workload, _spec_json(record),
            )  # fmt: skip
        for queue, payloads in (messages or {}).items():
            args.append(len(payloads))
            args.append(queue)
            args.extend(payloads)
        self._create(args=args, client=pipe)

    def prune_indexes(self, chunk: int = 1_000) -> int:
        """Drop the ids of expired records from every index, so each stays the size of
        the records kept. Run now and then (the workers' sweep), not on every create:
        that cost four commands a job. Only ids submitted more than a TTL ago can have
        expired, but not all of them have: a retry restarts its record's TTL."""
        oldest_kept = _score(time.time() - self.ttl)
        alive: dict[str, bool] = {}  # the same old ids sit in several indexes
        removed = 0
        for index in self.redis.scan_iter(match=f"{keys.job_index()}*", count=1_000):
            low = "-inf"
            while True:
                rows = self.redis.zrange(
                    index, low, f"({oldest_kept}", byscore=True, offset=0, num=chunk,
                    withscores=True,
                )  # fmt: skip
                unknown = [job_id for job_id, _ in rows if job_id not in alive]
                if unknown:
                    pipe = self.redis.pipeline(transaction=False)
                    for job_id in unknown:
                        pipe.exists(keys.job(job_id))
                    alive.update(zip(unknown, map(bool, pipe.execute()), strict=True))
                gone = [job_id for job_id, _ in rows if not alive[job_id]]
                if gone:
                    removed += self.redis.zrem(index, *gone)
                if len(rows) < chunk:
                    break
                low = f"({int(rows[-1][1])}"
        return removed

    def transition(
        self,
        job_id: str,
        allowed_from: frozenset[JobState] | set[JobState],
        to: JobState,
        fields: dict[str, Any] | None = None,
        count_attempt: bool = False,
        return_record: bool = False,
        refresh_ttl: bool = False,
    ) -> tuple[bool, JobState] | tuple[bool, JobState, JobRecord] | None:
        """Move a job to `to` if its state is in `allowed_from`; with `refresh_ttl`, the
        record is kept for the store's TTL from now (a job queued again).

        Returns (moved, previous state), with the record after the move appended when
        `return_record` and it moved; None when the record does not exist.
        """
        args: list[Any] = [",".join(sorted(allowed_from)), job_id, str(to)]
        flags = (
            ("a" if count_attempt else "")
            + ("r" if return_record else "")
            + ("e" if refresh_ttl else "")
        )
        args.extend([flags or "-", time.time(), self.ttl])
        for name, value in (fields or {}).items():
            args.extend([name, _field_value(name, value)])
        answer = self._transition(keys=[keys.job(job_id), keys.job_index("state", "")], args=args)
        if answer is None:
            return None
        moved, previous = answer[0], JobState(_text(answer[1]))
        if len(answer) > 2:
            flat = _text(answer[2])
            return bool(moved), previous, _decode(dict(zip(flat[::2], flat[1::2], strict=True)))
        return bool(moved), previous

    def renew_leases(self, job_ids: list[str], seconds: float) -> None:
        """Tell takeovers these jobs' worker is alive for `seconds` more (one round trip)."""
        until = str(time.time() + seconds)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hset(keys.job(job_id), "lease_until", until)
        pipe.execute()

    def set_fields(self, job_id: str, fields: dict[str, Any]) -> None:
        self.redis.hset(
            keys.job(job_id), mapping={k: _field_value(k, v) for k, v in fields.items()}
        )

    # -- reading -----------------------------------------------------------------------

    def task_id(self, job_id: str) -> str:
        """The Celery task id of the job's current message, which a cancel revokes: the
        claim records it; a job's first message carries the job id itself
        (services/messages.py), so no record of it means that."""
        return self.redis.hget(keys.job(job_id), "task_id") or job_id

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(keys.job(job_id))
        return _decode(_text(raw)) if raw else None

    def list(
        self,
        *,
        state: str | None = None,
        pool: str | None = None,
        workload: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> tuple[list[JobRecord], int | None]:
        """A page of records, newest first, and the cursor of the next page (or None).

        Reads the narrowest index among the filters; the other filters are checked on the
        records read, a chunk at a time.
        """
        filters = {"state": state, "pool": pool, "workload": workload}
        field = next((name for name, value in filters.items() if value is not None), None)
        index = keys.job_index(field, filters[field]) if field else keys.job_index()
        upper = f"({cursor}" if cursor is not None else "+inf"
        page: list[JobRecord] = []
        chunk = max(limit + 1, 32)
        while len(page) <= limit:
            rows = self.redis.zrange(
                index, upper, "-inf", byscore=True, desc=True, offset=0, num=chunk, withscores=True
            )
            if not rows:
                break
            pipe = self.redis.pipeline(transaction=False)
            for job_id, _ in rows:
                pipe.hgetall(keys.job(_text(job_id)))
            for (_job_id, score), raw in zip(rows, pipe.execute(), strict=True):
                upper = f"({int(score)}"
                if not raw:
                    continue  # expired since it was indexed
                record = _decode(_text(raw))
                if all(
                    value is None or str(getattr(record, name)) == value
                    for name, value in filters.items()
                ):
                    page.append(record)
                    if len(page) > limit:
                        break
            if len(rows) < chunk:
                break
        if len(page) > limit:
            page = page[:limit]
            return page, _score(page[-1].submitted_at)
        return page, None


def _field_value(name: str, value: Any) -> str:
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


def _text(raw: Any) -> Any:
    if isinstance(raw, bytes):
        return raw.decode()
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    return raw
