"""kombu's bookkeeping of unacknowledged messages, in fewer Redis round trips.

kombu's Redis transport emulates acknowledgement with two keys: a hash of the messages a
worker holds and a sorted set of when it took them, from which `restore_visible` puts a
message back after the visibility timeout. Stock kombu writes both in a MULTI/EXEC when
a message arrives and again when it is acknowledged: two round trips and eight commands
per message, all on the consumer's own thread (the event loop of a threads or prefork
worker). Profiled on a threads worker running no-op jobs, those two calls were a fifth of
the time the worker held the GIL (docs/performance.md).

Here an acknowledgement only frees the prefetch slot at once; the two deletions wait and
ride along with the next message's two writes, in one pipeline and one round trip. A
background flusher sends them after `ACK_FLUSH_DELAY` when no message comes along.

Why a late deletion is safe for jobrunner: a job's outcome is already in its record when
its message is acknowledged. Should the worker die before the deletion reaches Redis, the
message is delivered again after the visibility timeout, and the worker's claim finds the
job final and skips it (worker/tasks.py). The pipelines are not transactions: the order of
the commands is kept, and a message that would be lost between them is the same message
that BRPOP-then-record could already lose, which services/jobs/reconcile.py re-sends.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

log = logging.getLogger(__name__)

# How long acknowledgements wait for a message to share a round trip with. Short enough
# that an idle worker's unacked set is clean a moment after its last job.
ACK_FLUSH_DELAY = 0.02
# How many recent messages `job_seconds` estimates a job's time from.
JOBS_TIMED = 32


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: list[str] = []
        # Tags services/broker/transport.py took and recorded as unacked in one script.
        self._recorded: set[str] = set()
        self._acks_lock = threading.Lock()
        self._acks_waiting = threading.Event()
        self._flusher: threading.Thread | None = None
        # Messages held per prefetch slot (services/broker/transport.py deepens it while
        # Redis is far and jobs are short), and what that showed of the jobs' time.
        self.depth = 1
        self._taken_at: dict[str, tuple[float, int]] = {}
        self._jobs_timed: deque[float] = deque(maxlen=JOBS_TIMED)
        # What the channel claimed with each message it holds (TakeClaims.stamp's token):
        # given back if the message goes back to its queue unrun (`restore_by_tag`).
        self._claims: dict[str, Any] = {}

    # kombu's two checks of the prefetch limit, with `depth` messages a slot.
    def can_consume(self) -> bool:
        limit = self.prefetch_count * self.depth
        return not limit or len(self._delivered) - len(self._dirty) < limit

    def can_consume_max_estimate(self) -> int | None:
        limit = self.prefetch_count * self.depth
        if not limit:
            return None
        return max(limit - (len(self._delivered) - len(self._dirty)), 0)

    def job_seconds(self) -> float | None:
        """About how long a job runs, from the recent messages: the median time from
        taking one to acknowledging it, divided by the depth it was taken at (with
        `depth` messages a slot, each waits behind about depth - 1 others). None before
        any was acknowledged."""
        return statistics.median(self._jobs_timed) if self._jobs_timed else None

    def recorded(self, delivery_tag: str, recorded: bool = True) -> None:
        """The next append of this tag needs no Redis: the channel recorded it already
        (or, with `recorded=False`, no longer: the message went back to its queue)."""
        if recorded:
            self._recorded.add(delivery_tag)
        else:
            self._recorded.discard(delivery_tag)

    def holds_claim(self, delivery_tag: str, token: Any) -> None:
        """The message of `delivery_tag` carries a claim of its job (transport.py)."""
        self._claims[delivery_tag] = token

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.claims is not None:  # timed only for a worker that deepens
            self._taken_at[delivery_tag] = (time.monotonic(), self.depth)
        if delivery_tag in self._recorded:
            self._recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
            return
        delivery = message.delivery_info
        entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        acked = self.take_acks()
        try:
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                # Deletions first: a message restored and delivered again keeps its tag,
                # and its new entry must outlive the acknowledgement of its old one.
                if acked:
                    pipe.zrem(self.unacked_index_key, *acked)
                    pipe.hdel(self.unacked_key, *acked)
                pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
                pipe.hset(self.unacked_key, delivery_tag, entry)
                pipe.execute()
        except BaseException:
            self.give_back_acks(acked)
            raise
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        taken = self._taken_at.pop(delivery_tag, None)
        if taken is not None:
            self._jobs_timed.append((time.monotonic() - taken[0]) / taken[1])
        self._claims.pop(delivery_tag, None)
        with self._acks_lock:
            self._acks.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # frees the prefetch slot now
        freed = getattr(self.channel.connection, "slot_freed", None)
        if freed is not None:
            freed(self)  # a full gevent worker's loop may ask for more now (transport.py)
        if self.channel.closed:
            # Jobs still running when the connection was lost acknowledge on the old
            # channel, whose flusher has stopped: delete now, as stock kombu would.
            self.flush_acks()
            return
        self._acks_waiting.set()
        self._ensure_flusher()

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._taken_at.pop(delivery_tag, None)
        if not requeue:
            self._claims.pop(delivery_tag, None)
        super().reject(delivery_tag, requeue=requeue)  # requeue: by restore_by_tag

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        # Every way a taken message goes back to its queue comes here: a requeue (its
        # pool process died, or gave up on Redis), the unacknowledged at shutdown, a
        # take a closing channel read. Its job, if claimed on the take, is given back
        # first, so the message's next taker claims it from `queued` and runs it at once
        # instead of waiting for a lease nobody renews to lapse.
        self.release_claims([tag])
        super().restore_by_tag(tag, client=client, leftmost=leftmost)

    def restore_unacked(self, client: Any = None) -> None:
        self.release_claims(list(self._delivered))  # in one round trip, then each
        super().restore_unacked(client)

    def release_claims(self, tags: list[str]) -> None:
        tokens = [self._claims.pop(tag) for tag in tags if tag in self._claims]
        claims = self.channel.claims
        if not tokens or claims is None:
            return
        try:
            claims.release(tokens)
        except Exception:  # the message still goes back; its job waits for its lease
            log.exception("could not give back %d claim(s)", len(tokens))

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        # At shutdown: what was acknowledged must not come back after the timeout.
        self.flush_acks()
        return super().restore_unacked_once(stderr)

    def flush_acks(self) -> bool:
        """Send the waiting deletions now (one round trip), if there are any. False if
        Redis could not take them: they wait for the next try."""
        acked = self.take_acks()
        if not acked:
            return True
        try:
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                pipe.zrem(self.unacked_index_key, *acked)
                pipe.hdel(self.unacked_key, *acked)
                pipe.execute()
        except redis.RedisError as exc:
            self.give_back_acks(acked)
            log.warning("could not acknowledge %d message(s) yet: %s", len(acked), exc)
            return False
        except BaseException:
            self.give_back_acks(acked)
            raise
        return True

    def take_acks(self) -> list[str]:
        """The acknowledged tags not yet deleted in Redis; the caller deletes them (or
        gives them back)."""
        with self._acks_lock:
            acked, self._acks = self._acks, []
        return acked

    def give_back_acks(self, acked: list[str]) -> None:
        if acked:
            with self._acks_lock:
                self._acks[:0] = acked

    def _ensure_flusher(self) -> None:
        # Started on the first acknowledgement, in the process that acknowledges (the
        # main process of a prefork worker; under gevent, a greenlet). It runs until its
        # channel closes, so a check of None suffices on this per-job path.
        if self._flusher is not None:
            return
        with self._acks_lock:
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_forever, name="ack-flusher", daemon=True
                )
                self._flusher.start()

    def _flush_forever(self) -> None:
        delay = ACK_FLUSH_DELAY
        while not self.channel.closed or self._acks:
            woken = self._acks_waiting.wait(timeout=1.0)
            if not woken and not self._acks:
                continue  # idle; or deletions given back after a failure: try those
            time.sleep(delay)
            self._acks_waiting.clear()
            try:
                flushed = self.flush_acks()
            except Exception:  # never let the flusher die; the next round tries again
                log.exception("acknowledgement flush failed")
                flushed = False
            # While Redis is away, try again less and less often (up to every 2 s).
            delay = ACK_FLUSH_DELAY if flushed else min(delay * 2, 2.0)
