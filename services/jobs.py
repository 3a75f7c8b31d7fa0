"""The job record and its store in Redis.

A record is one Redis hash (`keys.job(id)`) with the job's TTL, plus its id in sorted sets
scored by submission time: one for all jobs and one per pool, workload and state, so a
filtered, paged listing reads only the ids it returns (its cost does not grow with the
number of stored jobs). State changes are Lua scripts, so the API and a worker never both
win a race (a cancel and a start, say).
"""

from __future__ import annotations

import itertools
import json
import time
from enum import StrEnum
from typing import Any, Literal

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
# Fields the store keeps for itself: the index score, when the message was last sent
# again by services.reconcile, and until when the running worker holds the job.
_STORE_ONLY = frozenset({"score", "dispatched_at", "lease_until"})


def _encode(record: JobRecord) -> dict[str, str]:
    # Fields at their default are left out (the decoder fills them in): a new record is
    # half the bytes, and the scripts read a missing `attempts` or `lease_until` as 0.
    data = record.model_dump(mode="json", exclude_defaults=True)
    out: dict[str, str] = {}
    for name, value in data.items():
        if name in _JSON_FIELDS:
            out[name] = json.dumps(value)
        elif value is None:
            continue
        elif isinstance(value, bool):
            out[name] = "1" if value else "0"
        else:
            out[name] = str(value)
    return out


def _decode(raw: dict[str, str]) -> JobRecord:
    # An empty string is a field cleared by a transition (a retried job's finished_at).
    data: dict[str, Any] = {k: v for k, v in raw.items() if k not in _STORE_ONLY and v != ""}
    for name in _JSON_FIELDS:
        if name in data:
            data[name] = json.loads(data[name])
    data["cancel_requested"] = data.get("cancel_requested") == "1"
    return JobRecord.model_validate(data)


def _score(submitted_at: float) -> int:
    return int(submitted_at * 1_000_000)


# Moves a job from one of the allowed states to a new one, setting fields as it goes, and
# keeps the per-state index in step. running -> running (a redelivery taking over) needs
# the running worker's lease to have expired. ARGV[4] holds flags: 'a' counts an attempt,
# 'r' returns the record as it is after the move (saves the worker a round trip).
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
for i = 6, #ARGV do sets[#sets + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(sets))
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
# messages. One JSON argument: {"records": [[key, field, value, ...]], "indexes":
# {index: [score, id, ...]}, "queues": {list: [payload, ...]}}; scores travel as strings,
# so no float rounding. A batch is at most 1,000 jobs: far below Lua's unpack limit.
_CREATE = """
local doc = cjson.decode(ARGV[2])
for _, row in ipairs(doc.records) do
  redis.call('HSET', unpack(row))
  redis.call('EXPIRE', row[1], ARGV[1])
end
for index, members in pairs(doc.indexes) do redis.call('ZADD', index, unpack(members)) end
for list, payloads in pairs(doc.queues) do redis.call('LPUSH', list, unpack(payloads)) end
return #doc.records
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
        script: atomic, one round trip, and one argument however many jobs. (As a
        MULTI of separate commands, redis-py spent more time packing a thousand commands
        and parsing their replies than Redis took to run them.)"""
        rows: list[list[str]] = []
        indexes: dict[str, list[str]] = {}
        for record in records:
            score = str(_score(record.submitted_at))
            fields = {**_encode(record), "score": score}
            rows.append([keys.job(record.id), *itertools.chain.from_iterable(fields.items())])
            for index in self._indexes(record):
                indexes.setdefault(index, []).extend((score, record.id))
        document = json.dumps({"records": rows, "indexes": indexes, "queues": messages or {}})
        self._create(args=[self.ttl, document], client=pipe)

    def prune_indexes(self) -> int:
        """Drop the ids of expired records from every index, so each stays the size of
        the records kept. Run now and then (the workers' sweep), not on every create:
        that cost four commands a job."""
        oldest_kept = _score(time.time() - self.ttl)
        removed = 0
        for index in self.redis.scan_iter(match=f"{keys.job_index()}*", count=1_000):
            removed += self.redis.zremrangebyscore(index, "-inf", f"({oldest_kept}")
        return removed

    def transition(
        self,
        job_id: str,
        allowed_from: frozenset[JobState] | set[JobState],
        to: JobState,
        fields: dict[str, Any] | None = None,
        count_attempt: bool = False,
        return_record: bool = False,
    ) -> tuple[bool, JobState] | tuple[bool, JobState, JobRecord] | None:
        """Move a job to `to` if its state is in `allowed_from`.

        Returns (moved, previous state), with the record after the move appended when
        `return_record` and it moved; None when the record does not exist.
        """
        args: list[Any] = [",".join(sorted(allowed_from)), job_id, str(to)]
        flags = ("a" if count_attempt else "") + ("r" if return_record else "")
        args.extend([flags or "-", time.time()])
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

    @staticmethod
    def _indexes(record: JobRecord) -> list[str]:
        return [
            keys.job_index(),
            keys.job_index("pool", record.pool),
            keys.job_index("workload", record.workload),
            keys.job_index("state", str(record.state)),
        ]


def _field_value(name: str, value: Any) -> str:
    if value is None and name not in _JSON_FIELDS:
        return ""
    if name in _JSON_FIELDS:
        if isinstance(value, list):
            value = [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
        return json.dumps(value.model_dump() if isinstance(value, BaseModel) else value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _text(raw: Any) -> Any:
    if isinstance(raw, bytes):
        return raw.decode()
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    return raw
