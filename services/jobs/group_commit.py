"""Group commit: the job-store writes of many jobs running at once in one process (a
threads or gevent worker), sent to Redis together.

Each running job writes twice — its claim and its outcome — and waits for the answer.
One at a time, every write is a round trip of its own; with Redis a few milliseconds
away that is most of a short job's time, and each write also costs a system call and a
reply parse of its own. Here a write that finds another batch already on its way joins
the next one: when the batch in flight comes back, the first of those waiting (the
leader) sends everything queued meanwhile in one pipeline and hands each caller its own
answer. Up to `max_in_flight` batches travel at once, so a write waits only when that
many are already on their way: under light load a batch is a single write, sent at once
(nothing waits for a timer); under heavy load a batch is as large as the writes that
arrived meanwhile. (Databases call this group commit; it is how they make many small
transactions cost one flush.) One batch in flight made a write wait a whole round trip
for the batch ahead of it: at 2 ms from Redis, 32 threads lost a sixth of their
throughput that way.

The pipeline is not a transaction: each script is atomic on its own, as it would be sent
alone, and an error answers only the write it belongs to. A connection error answers
every write of the batch, each of which retries as it would alone.

Threads only where threads are real, greenlets where gevent patched them: the lock and
condition below are `threading`'s, which a gevent worker's monkey-patching makes
cooperative.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

# At most this many writes per pipeline: a gevent worker may have hundreds finishing at
# once, and one huge pipeline would hold every one of them for its whole parse.
MAX_BATCH = 200
# Batches on their way at once (each on a connection of its own).
MAX_IN_FLIGHT = 4


@dataclass(eq=False)
class _Write:
    script: Any  # a redis-py Script
    keys: list[str]
    args: list[Any]
    taken: bool = False  # into a batch
    done: bool = False
    answer: Any = None
    error: BaseException | None = None


@dataclass
class GroupCommit:
    """Sends scripts on `client` in shared pipelines (see the module's docstring)."""

    client: redis.Redis
    max_batch: int = MAX_BATCH
    max_in_flight: int = MAX_IN_FLIGHT
    _queue: list[_Write] = field(default_factory=list)
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)
    batches: int = 0  # pipelines sent, for tests and the bench
    writes: int = 0  # writes sent in them

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """`script(keys, args)`'s answer, sent with whatever other writes are waiting."""
        write = _Write(script, keys, args)
        with self._changed:
            self._queue.append(write)
            # Wait while every slot is on its way, unless a batch took (and answers) us.
            while self._in_flight >= self.max_in_flight and not write.taken:
                self._changed.wait()
            leader = not write.taken
            if leader:
                # Its own write first, then the oldest of those waiting.
                self._queue.remove(write)
                batch = [write, *self._queue[: self.max_batch - 1]]
                self._queue = self._queue[self.max_batch - 1 :]
                for taken in batch:
                    taken.taken = True
                self._in_flight += 1
        if leader:
            try:
                self._send(batch)
            finally:
                with self._changed:
                    self._in_flight -= 1
                    self._changed.notify_all()
        else:
            with self._changed:
                while not write.done:
                    self._changed.wait()
        if write.error is not None:
            raise write.error
        return write.answer

    def _send(self, batch: list[_Write]) -> None:
        # EVALSHA by hand: a pipeline given Script objects first asks Redis whether its
        # scripts exist, a round trip of its own on every batch. A script Redis lost (a
        # restart) is answered NOSCRIPT, and that write is sent again alone, which loads it.
        pipe = self.client.pipeline(transaction=False)
        for write in batch:
            pipe.evalsha(write.script.sha, len(write.keys), *write.keys, *write.args)
        try:
            answers: list[Any] = pipe.execute(raise_on_error=False)
        except BaseException as exc:  # a connection error: every write of the batch has it
            for write in batch:
                write.error, write.done = exc, True
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self.batches += 1
            self.writes += len(batch)
        for write, answer in zip(batch, answers, strict=True):
            if isinstance(answer, redis.exceptions.NoScriptError):
                try:
                    answer = write.script(keys=write.keys, args=write.args)
                except Exception as exc:
                    answer = exc
            if isinstance(answer, Exception):
                write.error = answer
            else:
                write.answer = answer
            write.done = True


def direct(script: Any, keys: list[str], args: list[Any]) -> Any:
    """No grouping: one round trip per write (what a prefork pool process, running one job
    at a time, gains nothing over)."""
    return script(keys=keys, args=args)


ScriptRunner = Callable[[Any, list[str], list[Any]], Any]
