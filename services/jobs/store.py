"""The job store in Redis: records, their indexes, and every state change.

A record is one Redis hash (`redis_keys.job(id)`, laid out by services/jobs/record.py)
with the job's TTL, plus its id in sorted sets scored by submission time: one for all
jobs and one per pool, workload and state, so a filtered, paged listing reads only the
ids it returns (its cost does not grow with the number of stored jobs). State changes are
Lua scripts (transition.lua, create.lua beside this file), so the API and a worker never
both win a race (a cancel and a start, say).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from services.broker.transport import TAKE_SCRIPT
from services.core import redis_keys
from services.core.vocabulary import JobState
from services.jobs.group_commit import GroupCommit, direct
from services.jobs.job_metrics import lua_buckets
from services.jobs.record import (
    CREATABLE_FIELDS,
    JobRecord,
    as_text,
    decode_record,
    field_value,
    index_score,
    spec_json,
)

_SCRIPTS = resources.files(__package__)
# Moves a job between states, checking where it may come from, and counts the move for
# Prometheus (transition.lua, after the bounds of its histograms: job_metrics.py); the
# batch form moves many jobs in one call (a worker's group commit).
_TRANSITION = lua_buckets() + _SCRIPTS.joinpath("transition.lua").read_text()
TRANSITION_SCRIPT = _TRANSITION + _SCRIPTS.joinpath("transition_one.lua").read_text()
TRANSITION_BATCH_SCRIPT = _TRANSITION + _SCRIPTS.joinpath("transition_batch.lua").read_text()
# A worker's take that also claims what it took (claim_on_take.lua, after transition.lua
# and take.lua made a function; worker/pipeline.py).
CLAIM_ON_TAKE_SCRIPT = (
    _TRANSITION
    + "local function take(KEYS, ARGV)\n" + TAKE_SCRIPT + "\nend\n"
    + _SCRIPTS.joinpath("claim_on_take.lua").read_text()
)  # fmt: skip
# Stores new records, indexes them and pushes their messages in one go (create.lua).
CREATE_SCRIPT = _SCRIPTS.joinpath("create.lua").read_text()
# Renews the leases a worker holds, only for the runs that still hold them (renew.lua).
RENEW_SCRIPT = _SCRIPTS.joinpath("renew.lua").read_text()


@dataclass(frozen=True)
class Move:
    """One move of `JobStore.transition_many`: a run's outcome, say."""

    job_id: str
    allowed_from: frozenset[JobState]
    to: JobState
    fields: dict[str, Any]
    fence: int | None = None
    # A claim given back (its message back in the queue): not a retry (transition.lua 'u').
    released: bool = False


@dataclass(frozen=True)
class Transition:
    """What a transition did: whether the job moved, the state it was in, whether the
    write was refused as a late run's (fencing), and the record after the move when
    asked for."""

    moved: bool
    previous: JobState
    refused: bool = False
    record: JobRecord | None = None


@dataclass(frozen=True)
class RateCount:
    """A request counted against its API key's rate limit in the write it makes
    (create.lua), not in a round trip of its own: `counter`, the key's count of this
    second (redis_keys.rate_window); `limit`, its requests a second."""

    counter: str
    limit: int


class RateLimited(Exception):
    """The write was one request past its key's limit: nothing was written but the count."""

    def __init__(self, rate: RateCount, counted: int) -> None:
        super().__init__(f"{counted} requests this second, over {rate.limit}")
        self.rate = rate


def created_or_refused(answer: int, rate: RateCount | None) -> None:
    """RateLimited if create.lua's `answer` says it counted the request past its limit."""
    if rate is not None and int(answer) < 0:
        raise RateLimited(rate, -int(answer))


class JobStore:
    """Job records in one Redis database."""

    def __init__(
        self, client: redis.Redis, ttl_seconds: int, group_commit: GroupCommit | None = None
    ) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._transition = client.register_script(TRANSITION_SCRIPT)
        self._transition_batch = client.register_script(TRANSITION_BATCH_SCRIPT)
        # How a transition's script is sent: alone (direct), or with the other writes
        # waiting in this process, in one call (services/jobs/group_commit.py).
        self._run_script = direct
        if group_commit is not None:
            group_commit.batch_as(self._transition, self._transition_batch)
            self._run_script = group_commit.run
        self._create = client.register_script(CREATE_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)

    # -- writing -----------------------------------------------------------------------

    def create(self, record: JobRecord, pipe: redis.client.Pipeline | None = None) -> None:
        """Store a new record and index it; inside `pipe` when the caller batches."""
        self.create_many([record], pipe=pipe)

    def create_many(
        self,
        records: list[JobRecord],
        messages: dict[str, list[str]] | None = None,
        pipe: redis.client.Pipeline | None = None,
        rate: RateCount | None = None,
    ) -> None:
        """Store new records, index them and LPUSH `messages` ({list key: payloads}) in one
        script: atomic, one round trip. (As a MULTI of separate commands, redis-py spent
        more time packing a thousand commands and parsing their replies than Redis took to
        run them: docs/performance.md.) A new record holds its spec and its state; outcomes
        come later, by transitions.

        With `rate`, the script counts the request first, and writes nothing else if that
        puts it past the limit: RateLimited (inside `pipe`, the caller checks the script's
        answer with `created_or_refused`)."""
        args: list[Any] = [
            self.ttl, redis_keys.job(""), redis_keys.job_index(), redis_keys.job_index("pool", ""),
            redis_keys.job_index("workload", ""), redis_keys.job_index("state", ""), len(records),
            rate.limit if rate else 0,
        ]  # fmt: skip
        for record in records:
            if not record.model_fields_set <= CREATABLE_FIELDS:
                extra = sorted(record.model_fields_set - CREATABLE_FIELDS)
                raise ValueError(f"a new record carries only its spec and state, not {extra}")
            args += (
                record.id, index_score(record.submitted_at), record.state.value, record.pool,
                record.workload, spec_json(record),
            )  # fmt: skip
        for queue, payloads in (messages or {}).items():
            args.append(len(payloads))
            args.append(queue)
            args.extend(payloads)
        answer = self._create(keys=[rate.counter] if rate else [], args=args, client=pipe)
        if pipe is None:
            created_or_refused(answer, rate)

    def prune_indexes(self, chunk: int = 1_000) -> int:
        """Drop the ids of expired records from every index, so each stays the size of
        the records kept. Run now and then (the workers' sweep), not on every create:
        that cost four commands a job. Only ids submitted more than a TTL ago can have
        expired, but not all of them have: a retry restarts its record's TTL."""
        oldest_kept = index_score(time.time() - self.ttl)
        alive: dict[str, bool] = {}  # the same old ids sit in several indexes
        removed = 0
        for index in self.redis.scan_iter(match=f"{redis_keys.job_index()}*", count=1_000):
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
                        pipe.exists(redis_keys.job(job_id))
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
        fence: int | None = None,
        lease_seconds: float | None = None,
        dispatch_in: float | None = None,
        redelivered: bool = False,
    ) -> Transition | None:
        """Move a job to `to` if its state is in `allowed_from`; with `refresh_ttl`, the
        record is kept for the store's TTL from now (a job queued again).

        `fence` is the attempt number of the run that writes (its claim's): the write is
        refused, and counted, once another attempt holds the job (transition.lua).
        `lease_seconds` sets the lease from Redis's clock, `dispatch_in` sets
        dispatched_at that far ahead of it (a retry's message, due then). `redelivered`:
        the claiming run's message was delivered again (counted for Prometheus).

        None when the record does not exist.
        """
        keys, args = self._transition_call(
            job_id, allowed_from, to, fields, count_attempt, return_record, refresh_ttl,
            fence, lease_seconds, dispatch_in, redelivered, self.ttl,
        )  # fmt: skip
        return _transition_answer(self._run_script(self._transition, keys, args))

    def transition_many(self, moves: list[Move]) -> list[Transition | None]:
        """Several moves in one script call (transition_batch.lua), one round trip, each
        checked and answered as `transition` would; a move the script failed on raises."""
        if not moves:
            return []
        keys: list[str] = []
        args: list[Any] = [len(moves)]
        for move in moves:
            own_keys, own_args = self._transition_call(
                move.job_id, move.allowed_from, move.to, move.fields, fence=move.fence,
                ttl=self.ttl, released=move.released,
            )  # fmt: skip
            keys += own_keys
            args += [len(own_keys), len(own_args), *own_args]
        answers = self._transition_batch(keys=keys, args=args)
        for answer in answers:
            if isinstance(answer, list) and answer and answer[0] == -1:
                raise redis.ResponseError(as_text(answer[1]))
        return [_transition_answer(answer) for answer in answers]

    @staticmethod
    def _transition_call(
        job_id: str,
        allowed_from: frozenset[JobState] | set[JobState],
        to: JobState,
        fields: dict[str, Any] | None = None,
        count_attempt: bool = False,
        return_record: bool = False,
        refresh_ttl: bool = False,
        fence: int | None = None,
        lease_seconds: float | None = None,
        dispatch_in: float | None = None,
        redelivered: bool = False,
        ttl: int = 0,
        released: bool = False,
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of transition.lua for one move (see `transition`)."""
        flags = (
            ("a" if count_attempt else "")
            + ("r" if return_record else "")
            + ("e" if refresh_ttl else "")
            + ("l" if lease_seconds is not None else "")
            + ("d" if dispatch_in is not None else "")
            + ("v" if redelivered else "")
            + ("u" if released else "")
        )
        seconds = lease_seconds if lease_seconds is not None else dispatch_in
        args: list[Any] = [
            ",".join(sorted(allowed_from)), job_id, str(to), flags or "-", seconds or 0,
            ttl, "" if fence is None else fence,
        ]  # fmt: skip
        for name, value in (fields or {}).items():
            args.extend([name, field_value(name, value)])
        keys = [
            redis_keys.job(job_id), redis_keys.job_index("state", ""), redis_keys.counters(),
            redis_keys.metrics(),
        ]  # fmt: skip
        return keys, args

    def renew_leases(self, held: dict[str, int], seconds: float) -> dict[str, str]:
        """Extend, by `seconds` from Redis's clock, the lease of each job in `held` (job id
        -> the attempt number its run holds), in one round trip. Returns the leases no
        longer held, each with why: "taken" (another attempt holds the job) or "ended"
        (the job left running under that attempt: its outcome, a cancel)."""
        job_ids = list(held)
        reply = self._renew(
            keys=[redis_keys.job(job_id) for job_id in job_ids],
            args=[seconds, *(held[job_id] for job_id in job_ids)],
        )
        lost = [as_text(item) for item in reply]
        return {job_ids[int(lost[i]) - 1]: lost[i + 1] for i in range(0, len(lost), 2)}

    def refused_writes(self) -> int:
        """How many writes of runs that no longer held their job were refused, all jobs."""
        return int(self.redis.hget(redis_keys.counters(), "refused_writes") or 0)

    def now(self) -> float:
        """Redis's clock, seconds since the epoch: the one every host compares leases and
        dispatch times with."""
        seconds, micros = self.redis.time()
        return seconds + micros / 1_000_000

    def set_fields(self, job_id: str, fields: dict[str, Any]) -> None:
        self.redis.hset(
            redis_keys.job(job_id), mapping={k: field_value(k, v) for k, v in fields.items()}
        )

    # -- reading -----------------------------------------------------------------------

    def task_id(self, job_id: str) -> str:
        """The Celery task id of the job's current message, which a cancel revokes: the
        claim records it; a job's first message carries the job id itself
        (services/broker/messages.py), so no record of it means that."""
        return self.redis.hget(redis_keys.job(job_id), "task_id") or job_id

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(redis_keys.job(job_id))
        return decode_record(as_text(raw)) if raw else None

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
        index = redis_keys.job_index(field, filters[field]) if field else redis_keys.job_index()
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
                pipe.hgetall(redis_keys.job(as_text(job_id)))
            for (_job_id, score), raw in zip(rows, pipe.execute(), strict=True):
                upper = f"({int(score)}"
                if not raw:
                    continue  # expired since it was indexed
                record = decode_record(as_text(raw))
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
            return page, index_score(page[-1].submitted_at)
        return page, None


def _transition_answer(answer: Any) -> Transition | None:
    """transition.lua's answer as a Transition; None when the record does not exist."""
    if answer is None:
        return None
    record = None
    if len(answer) > 3:
        flat = as_text(answer[3])
        record = decode_record(dict(zip(flat[::2], flat[1::2], strict=True)))
    return Transition(
        moved=bool(answer[0]),
        previous=JobState(as_text(answer[1])),
        refused=bool(answer[2]),
        record=record,
    )
