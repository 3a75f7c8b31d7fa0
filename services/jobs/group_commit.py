"""Group commit: the job-store writes of many jobs running at once in one process (a
threads or gevent worker), sent to Redis together.

Each running job writes twice — its claim and its outcome — and waits for the answer.
One at a time, every write is a round trip of its own; with Redis a few milliseconds
away that is most of a short job's time, and each write also costs a system call and a
reply parse of its own. Here a write that finds another batch already on its way joins
the next one: when the batch in flight comes back, the first of those waiting (the
leader) sends everything queued meanwhile in one pipeline and hands each caller its own
answer. (Databases call this group commit; it is how they make many small transactions
cost one flush.) A write that finds nothing on its way is sent at once: nothing waits for
a timer under light load. One that finds a batch on its way waits for it, and goes with
the next batch, as long as the batch ahead is worth waiting for:

- with Redis near (recent batches back within NEAR_TRIP_SECONDS), for HOLD_SECONDS at
  most: then it leaves with the writes queued behind it as a batch of its own. On
  loopback a batch is back in a fraction of that unless the process is busy, and then
  sharing batches is what frees it;
- with Redis far, not at all: it leaves at once while fewer than `max_in_flight` batches
  travel (one batch at a time made a write wait a whole round trip for the batch ahead:
  at 2 ms from Redis, 32 threads lost a sixth of their throughput that way).

The pipeline is not a transaction: each script is atomic on its own, as it would be sent
alone, and an error answers only the write it belongs to. A connection error answers
every write of the batch, each of which retries as it would alone.

A script can have a batch form (`batch_as`): the writes of that script in one batch are
then sent as a single call of it, which runs them one after the other and writes what
they share once (the job store's moves: services/jobs/transition_batch.lua). One command
instead of n for redis-py to pack and parse, and for Redis to run the index and metric
updates of n jobs: a gevent worker's no-ops in bulk went from 17.4 Redis commands a job
to 7 (docs/performance.md).

Threads only where threads are real, greenlets where gevent patched them: the locks below
are `threading`'s, which a gevent worker's monkey-patching makes cooperative.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

# At most this many writes per pipeline: a gevent worker may have hundreds finishing at
# once, and one huge pipeline would hold every one of them for its whole parse.
MAX_BATCH = 200
# Batches on their way at once (each on a connection of its own).
MAX_IN_FLIGHT = 4
# With Redis near (below), a write that finds a batch on its way waits for it this long
# at most before a batch of its own may leave. On loopback a batch is mostly back well
# within it, unless the process is busy: then its leader waits for the GIL or the gevent
# hub, and the writes arriving meanwhile are what it pays to share a batch: a threads
# worker (-c8) made 14.5 Redis commands a no-op job instead of 18.9 and ran 6-34 % more
# of them; a gevent worker spent 0.92-1.12 ms of CPU on a sleep(0.1) job at -c100
# instead of 1.17-1.21 (bench/RESULTS.md, "A bounded wait for the batch ahead"). Waiting
# for the batch ahead without a bound cost that sleep 9 points of ideal instead.
HOLD_SECONDS = 0.005
# Redis is near while the fastest round trip of recent batches is below this. Farther,
# a write would wait a network round trip it can overlap instead (2 ms from Redis, one
# batch at a time cost 32 threads a sixth of their throughput): it never holds back.
NEAR_TRIP_SECONDS = 0.001
# Batches to a window. "Recent" is the last full window and the current one; their
# fastest trip, not a mean, because a busy process stretches trips but never shortens
# them; windows, so that a Redis that moved is seen within a few hundred batches.
TRIP_WINDOW = 100


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class _Write:
    script: Any  # a redis-py Script
    keys: list[str]
    args: list[Any]
    answer: Any = None
    error: BaseException | None = None
    # Set when this write is to send a batch (its own write first) for the others.
    batch: list[_Write] | None = None
    # Its caller stopped waiting (a killed greenlet): never made to lead, nor sent if it
    # has not left yet.
    abandoned: bool = False
    # Released once: when the write is answered, or handed a batch to send. A lock held
    # from birth is the cheapest one-shot wake there is, for threads and greenlets alike.
    _wake: threading.Lock = field(default_factory=_held_lock)

    def wait(self, timeout: float = -1) -> bool:
        """Until woken (True), or `timeout` seconds at most when given (False: not woken)."""
        return self._wake.acquire(timeout=timeout)

    def wake(self) -> None:
        self._wake.release()


@dataclass
class GroupCommit:
    """Sends scripts on `client` in shared pipelines (see the module's docstring)."""

    client: redis.Redis
    max_batch: int = MAX_BATCH
    max_in_flight: int = MAX_IN_FLIGHT
    hold: float = HOLD_SECONDS
    near_trip: float = NEAR_TRIP_SECONDS
    _queue: list[_Write] = field(default_factory=list)
    _in_flight: int = 0
    _last_departure: float = 0.0  # time.monotonic() when the last batch left
    # The fastest trip of the last full window of batches, and of the current one; with
    # nothing measured yet (inf), Redis counts as far.
    _fastest_trip: float = math.inf
    _window_fastest: float = math.inf
    _window_trips: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    batches: int = 0  # pipelines sent, for tests and the bench
    writes: int = 0  # writes sent in them
    # A script's sha -> its batch form (see batch_as).
    _batch_forms: dict[str, Any] = field(default_factory=dict)

    def batch_as(self, script: Any, batch_script: Any) -> None:
        """Send the writes of `script` that share a batch as one call of `batch_script`.
        It takes every write's keys in KEYS, one write's after another's, and in ARGV how
        many writes, then for each its number of keys, its number of arguments and its
        arguments; it answers a list, one answer per write as `script` would give it, or
        [-1, message] for a write that failed alone."""
        self._batch_forms[script.sha] = batch_script

    def run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """`script(keys, args)`'s answer, sent with whatever other writes are waiting."""
        write = _Write(script, keys, args)
        hold = self.hold if self.redis_is_near() else 0.0
        with self._lock:
            now = time.monotonic()
            if self._in_flight == 0 or (
                self._in_flight < self.max_in_flight and now - self._last_departure >= hold
            ):
                self._depart(write, now)
                first_waiting = False
            else:
                self._queue.append(write)
                first_waiting = len(self._queue) == 1
        if write.batch is None:
            # Each waiting write is woken once, by the batch that answered it or to send
            # the next batch itself. (A condition notified on every answer woke all the
            # waiting writes each time: a fifth of a gevent worker's CPU at 100 slots.)
            try:
                if not (first_waiting and self._hold_back(write, hold)):
                    write.wait()
            except BaseException:  # a killed greenlet, an interrupt: never strand others
                self._abandon(write)
                raise
        if write.batch is not None:
            self._lead(write.batch)
        if write.error is not None:
            raise write.error
        return write.answer

    def _depart(self, write: _Write, now: float) -> None:
        """Under the lock: `write` leads a batch of its own: itself first, then the oldest
        of those waiting."""
        self._in_flight += 1
        self._last_departure = now
        write.batch = [write, *self._take(self.max_batch - 1)]

    def redis_is_near(self) -> bool:
        """Whether recent batches came back faster than `near_trip` (see NEAR_TRIP_SECONDS)."""
        return min(self._fastest_trip, self._window_fastest) < self.near_trip

    def _hold_back(self, write: _Write, hold: float) -> bool:
        """`write`, first in the queue, waits until `hold` since the last departure is
        over: True if it was woken meanwhile (answered, or handed the next batch), or
        leaves then with the queue as a batch of its own; False if it must wait on."""
        left = self._last_departure + hold - time.monotonic()
        if write.wait(timeout=max(0.0, left)):
            return True
        with self._lock:
            if write.batch is not None or write not in self._queue:
                return False  # handed a batch, or taken into one: its wake is coming
            if self._in_flight >= self.max_in_flight:
                return False  # the first batch to come back hands it on
            self._queue.remove(write)
            self._depart(write, time.monotonic())
            return True

    def _take(self, count: int) -> list[_Write]:
        taken, self._queue = self._queue[:count], self._queue[count:]
        return taken

    def _lead(self, batch: list[_Write]) -> None:
        """Send `batch` (led by its first write, the caller's), then hand the oldest
        waiting writes to the first of them as the next batch, and wake the answered."""
        try:
            self._send(batch)
        finally:
            with self._lock:
                leader = self._hand_on(self._take(self.max_batch))
            if leader is not None:
                leader.wake()
            for answered in batch[1:]:
                answered.wake()

    def _hand_on(self, batch: list[_Write]) -> _Write | None:
        """Under the lock: `batch`, less the writes whose callers left, given to its first
        write to send (the batch slot passes to it); else the oldest of the queue; else
        None, and one batch fewer in flight."""
        live = [write for write in batch if not write.abandoned]
        if not live:
            live = self._take(self.max_batch)  # the queue holds no abandoned write
        if not live:
            self._in_flight -= 1
            return None
        live[0].batch = live
        self._last_departure = time.monotonic()
        return live[0]

    def _abandon(self, write: _Write) -> None:
        """`write`'s caller stopped waiting: it leaves the queue, or hands the batch it
        was given to send on to a write whose caller still waits."""
        with self._lock:
            write.abandoned = True
            if write in self._queue:
                self._queue.remove(write)
                return
            if write.batch is None:
                return  # in a batch on its way, or in one another write will send
            batch, write.batch = write.batch, None
            leader = self._hand_on(batch)
        if leader is not None:
            leader.wake()

    def _send(self, batch: list[_Write]) -> None:
        # EVALSHA by hand: a pipeline given Script objects first asks Redis whether its
        # scripts exist, a round trip of its own on every batch. A script Redis lost (a
        # restart) is answered NOSCRIPT, and that call is sent again alone, which loads it.
        calls = self._calls(batch)
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args, _ in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        sent = time.monotonic()
        try:
            answers: list[Any] = pipe.execute(raise_on_error=False)
            self._note_trip(time.monotonic() - sent)
        except BaseException as exc:  # a connection error: every write of the batch has it
            for write in batch:
                write.error = exc
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self.batches += 1
            self.writes += len(batch)
        for (script, keys, args, writes), answer in zip(calls, answers, strict=True):
            if isinstance(answer, redis.exceptions.NoScriptError):
                try:
                    answer = script(keys=keys, args=args)
                except Exception as exc:
                    answer = exc
            if isinstance(answer, Exception):
                for write in writes:
                    write.error = answer
            elif len(writes) == 1 and script is writes[0].script:
                writes[0].answer = answer
            else:
                for write, own in zip(writes, answer, strict=True):
                    if isinstance(own, list) and own and own[0] == -1:
                        write.error = redis.ResponseError(own[1])
                    else:
                        write.answer = own

    def _note_trip(self, trip: float) -> None:
        # Unlocked: two batches noting at once may lose one trip of the window, harmless.
        self._window_fastest = min(self._window_fastest, trip)
        self._window_trips += 1
        if self._window_trips >= TRIP_WINDOW:
            self._fastest_trip, self._window_fastest, self._window_trips = (
                self._window_fastest, math.inf, 0,
            )  # fmt: skip

    def _calls(self, batch: list[_Write]) -> list[tuple[Any, list[str], list[Any], list[_Write]]]:
        """The calls that send `batch`: (script, keys, args, the writes it answers). The
        writes of a script with a batch form share one call of it when there are several."""
        calls, grouped = [], {}
        for write in batch:
            form = self._batch_forms.get(write.script.sha)
            if form is None:
                calls.append((write.script, write.keys, write.args, [write]))
            else:
                grouped.setdefault(write.script.sha, (form, []))[1].append(write)
        for form, writes in grouped.values():
            if len(writes) == 1:
                write = writes[0]
                calls.append((write.script, write.keys, write.args, writes))
                continue
            keys: list[str] = []
            args: list[Any] = [len(writes)]
            for write in writes:
                keys += write.keys
                args += [len(write.keys), len(write.args), *write.args]
            calls.append((form, keys, args, writes))
        return calls


def direct(script: Any, keys: list[str], args: list[Any]) -> Any:
    """No grouping: one round trip per write (what a prefork pool process, running one job
    at a time, gains nothing over)."""
    return script(keys=keys, args=args)
