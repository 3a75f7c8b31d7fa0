"""kombu's Redis transport, with three changes that cut a worker's round trips per message.

Same keys, same messages, same guarantees; the API (sending) and the workers (consuming)
both use it through `broker_transport`.

1. One Redis client per channel instead of one per command. kombu's
   `Channel.conn_or_acquire` builds a new `redis.Redis` for every publish, acknowledgement
   and unacked-bookkeeping call, and redis-py builds its large, case-insensitive
   response-callback table in every constructor (redis/redis-py#3624, fix proposed in
   redis/redis-py#4124): a large share of a worker's GIL time under py-spy. A
   `redis.Redis` over a connection pool is safe to share between threads and greenlets,
   so a channel keeps one, made again whenever kombu replaces the pool (after a lost
   connection).
2. As many messages per round trip as the worker has room for, without waiting for them.
   A BRPOP brings one message, yet a busy worker has several slots free when it asks
   (hundreds, for a gevent worker). Once a BRPOP found the queue non-empty, the channel
   asks next with a take of all its free room (`take.lua`, which also records the
   messages as unacked, as kombu would, but atomically: kombu pops, then records), sent
   on the consumer's connection like a BRPOP, so the loop keeps dispatching and
   acknowledging while it travels; and again while takes come back full. The unacked
   bookkeeping itself is services/broker/qos.py. "Found the queue non-empty" is judged
   against the round trip the channel measures on its own takes: a BRPOP answered within
   about one round trip did not wait for its message, whatever the network's latency. (A
   fixed 2 ms bound, and takes that blocked the loop for a round trip, kept a worker 2 ms
   from Redis at 12 % of its loopback throughput: docs/cluster.md.)
   A worker may also claim the jobs it takes in the same script (`TakeClaims`, which
   worker/pipeline.py provides to a prefork worker whose Redis is far), and hold more
   messages than it has slots while its jobs are short (`QoS.depth`).
3. A full gevent worker asks again as soon as a hundredth of its slots (at least one) are
   free, woken by the acknowledgements, and within FULL_POLL_SECONDS of a job ending in
   any case, not after Celery's 2 s poll (`drain_events`).

What each change measured is in docs/performance.md. A channel can also hand back what it
would have pushed (`collecting`), so that services/broker/messages.py can let Celery and
kombu build a message once and then write it into the same Redis transaction as the
job's record.

With a sentinel:// REDIS_URL the same channel runs on kombu's Sentinel channel
(`SentinelTransport`): its connections go to the master the sentinels name, and follow a
failover (docs/high-availability.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from queue import Empty
from typing import Any, ClassVar, Protocol

import redis
import redis.sentinel
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from services.broker.qos import QoS
from services.core.redis_clients import is_sentinel_url, sentinel_target, storage_refusal
from services.core.settings import Settings

# What `broker_transport` names; kombu resolves "module:Class" paths itself.
log = logging.getLogger(__name__)

TRANSPORT_PATH = "services.broker.transport:Transport"
SENTINEL_TRANSPORT_PATH = "services.broker.transport:SentinelTransport"

# A BRPOP answered within its round trip plus this found messages waiting: more may be
# behind them. The margin covers the worker's own scheduling noise.
TAKE_AFTER_WAITING_UNDER = 0.002
# Round trips remembered to estimate the channel's own (the shortest of them).
ROUND_TRIPS_KEPT = 32

# At most this many messages per extra take: a gevent worker with 500 free slots fills
# them over a few round trips rather than in one long script.
TAKE_AT_MOST = 100

# While Redis refuses writes (memory or disk full), the consumer asks again this often,
# and says so in the log at most this often.
REFUSAL_PAUSE = 0.5
REFUSAL_LOG_EVERY = 10.0

# Takes what the worker has room for and records it as unacked, in one script.
TAKE_SCRIPT = resources.files(__package__).joinpath("take.lua").read_text()


class TakeClaims(Protocol):
    """What a worker adds to its takes (worker/pipeline.py): the jobs of the messages it
    takes are claimed in the same script, so the process that runs one need not claim it
    first, a round trip of its own. The broker knows nothing of jobs; this says how."""

    # A script that takes as take.lua does (which it wraps) and claims what it took. Its
    # ARGV: `arguments()`, then take.lua's. Its answer: {list key, message, claim, ...}.
    script: str

    def wanted(self, round_trip: float) -> bool:
        """Whether to claim on this take, Redis `round_trip` seconds away (inf: not yet
        measured)."""

    def depth(self, round_trip: float, job_seconds: float | None) -> int:
        """Messages to hold per prefetch slot (QoS.depth), given how long jobs take."""

    def arguments(self) -> list[Any]:
        """The script's own arguments, before take.lua's."""

    def stamp(self, payload: dict[str, Any], claim: Any, sent_at: float) -> Any:
        """Put the `claim` the script answered for the message `payload` into it (its
        headers travel to the process that runs the job); `sent_at`: when the take was
        sent, on this host's monotonic clock. A token for `release`, or None if nothing
        was claimed."""

    def release(self, tokens: list[Any]) -> None:
        """Give back the claims of messages going back to their queue unrun."""


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: redis.Redis | None = None
    _collected: list[tuple[str, str]] | None = None
    # Set by a worker that claims on its takes (worker/pipeline.py); None: takes only.
    claims: ClassVar[TakeClaims | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The SHA of each take script (take.lua, a TakeClaims'), loaded on first use.
        self._take_shas: dict[str, str] = {}
        # Whether the last look found the queue holding more than it gave (see
        # _brpop_start), and the room and acknowledgements of a take in flight, and
        # whether it claims.
        self._queue_busy = False
        self._pending_take: tuple[int, list[str], bool] | None = None
        # How long recent takes took, seconds: the shortest is the round trip to Redis.
        self._round_trips: deque[float] = deque(maxlen=ROUND_TRIPS_KEPT)
        # Queues whose consumer acknowledges: only their messages are recorded as unacked
        # (a control client's replies are consumed without acknowledgement).
        self._acked_queues: set[str] = set()
        self._refusal_logged_at = float("-inf")

    def basic_consume(self, queue: str, no_ack: bool = False, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._acked_queues.discard(queue)
        else:
            self._acked_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    @contextmanager
    def collecting(self) -> Iterator[list[tuple[str, str]]]:
        """Messages published meanwhile are not pushed but listed, as (Redis list key,
        payload): exactly what kombu would have LPUSHed."""
        self._collected = collected = []
        try:
            yield collected
        finally:
            self._collected = None

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if self._collected is None:
            return super()._put(queue, message, **kwargs)
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        self._collected.append((key, dumps(message)))
        return None

    def _brpop_start(self, timeout: Any = None) -> Any:
        # While the queue is known to hold messages, the loop's next question is a take of
        # all the room there is, sent on the consumer's connection like a BRPOP: the loop
        # goes on (dispatching, acknowledging) while it travels, and its answer is read
        # where a BRPOP's would be. A BRPOP, which brings one message, only when the
        # queue may be empty.
        self._deepen()
        if self._queue_busy and not (self._closing or self.closed) and self._send_take():
            return None
        return super()._brpop_start(timeout)

    def _brpop_read(self, **options: Any) -> Any:
        if self._pending_take is not None:
            return self._read_take(**options)
        waited = time.monotonic() - (getattr(self, "_brpop_sent_at", None) or 0.0)
        try:
            delivered = super()._brpop_read(**options)  # raises Empty when nothing came
        except redis.ResponseError as exc:
            self._wait_out_refusal(exc)
            raise Empty() from None
        # Answered within about a round trip: the BRPOP did not wait, the queue held
        # messages, and more are probably behind this one. Answered later: it waited on
        # an empty queue, its message came alone, and a take would find nothing.
        self._queue_busy = waited < self.round_trip() + TAKE_AFTER_WAITING_UNDER
        return delivered

    def _wait_out_refusal(self, exc: redis.ResponseError) -> None:
        """Redis up but refusing writes (its memory or disk full) answers a BRPOP or a
        take with an error, which kombu would take for an unrecoverable one and stop the
        worker: the consumer waits a moment and asks again instead, until Redis has room.
        The connection is sound (an error is a whole reply). Any other error is raised."""
        full = storage_refusal(exc)
        if full is None:
            raise exc
        now = time.monotonic()
        if now - self._refusal_logged_at > REFUSAL_LOG_EVERY:
            self._refusal_logged_at = now
            log.warning("Redis refuses writes (%s full): waiting to take messages: %s", full, exc)
        time.sleep(REFUSAL_PAUSE)

    def round_trip(self) -> float:
        """The round trip to Redis, as the shortest recent take measured it; unknown
        (infinite) before the first take, so the first BRPOP is followed by one."""
        return min(self._round_trips, default=float("inf"))

    def _claiming(self) -> TakeClaims | None:
        claims = self.claims
        return claims if claims is not None and claims.wanted(self.round_trip()) else None

    def _deepen(self) -> None:
        """Hold as many messages a slot as the TakeClaims asks while it claims (a message
        waiting in the worker is one the next free slot starts without a round trip);
        one otherwise."""
        claims = self._claiming()
        if claims is not None:
            self.qos.depth = claims.depth(self.round_trip(), self.qos.job_seconds())
        else:
            self.qos.depth = 1

    def _send_take(self) -> bool:
        """Send take.lua for as many messages as the prefetch leaves room for (at most
        TAKE_AT_MOST), with the acknowledgements waiting to be deleted; False if there is
        nothing to ask for."""
        room = self.qos.can_consume_max_estimate()
        room = TAKE_AT_MOST if room is None else min(room, TAKE_AT_MOST)
        queues = [queue for queue in self.active_queues if queue in self._acked_queues]
        if room <= 0 or not queues or self.global_keyprefix:
            return False
        lists = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        keys = [self.unacked_index_key, self.unacked_key, *lists]
        connection = self.client.connection
        claims = self._claiming()
        script = TAKE_SCRIPT if claims is None else claims.script
        sha = self._take_shas.get(script)
        if sha is None:
            sha = self._take_shas[script] = self.client.script_load(script)
        extra = [] if claims is None else claims.arguments()
        acked = self.qos.take_acks()
        self._pending_take = (room, acked, claims is not None)
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        try:
            connection.send_command(
                "EVALSHA", sha, len(keys), *keys, *extra, room, time.time(), len(acked),
                *acked,
            )  # fmt: skip
        except BaseException:
            self._pending_take = None
            self._in_poll = None
            self.qos.give_back_acks(acked)
            raise
        return True

    def _read_take(self, **options: Any) -> bool:
        """The answer of a take sent by _send_take: its messages, recorded as unacked by
        the script, are delivered (none: the queue is empty, Empty)."""
        assert self._pending_take is not None
        room, acked, claiming = self._pending_take
        self._pending_take = None
        try:
            reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
        except redis.exceptions.NoScriptError:
            # Redis restarted and forgot the script: load it again before the next take.
            self._take_shas.clear()
            self._queue_busy = False
            self.qos.give_back_acks(acked)
            raise Empty() from None
        except redis.ResponseError as exc:
            self.qos.give_back_acks(acked)
            self._queue_busy = False
            self._wait_out_refusal(exc)
            raise Empty() from None
        except self.connection_errors:
            # As after a BRPOP: reconnect on the next round. Whatever the script did is
            # consistent in Redis (taken messages are recorded as unacked).
            self.qos.give_back_acks(acked)
            self._queue_busy = False
            self.client.connection.disconnect()
            raise
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # the connection is idle now (kombu's own rule)
        self._round_trips.append(time.monotonic() - self._brpop_sent_at)
        step = 3 if claiming else 2
        pairs = [(bytes_to_str(reply[i]), reply[i + 1]) for i in range(0, len(reply), step)]
        claims = reply[2::3] if claiming else []
        # All the room filled: more may wait. Less: the queue is empty for now.
        self._queue_busy = len(pairs) >= room
        if not pairs:
            raise Empty()
        payloads = [loads(bytes_to_str(item)) for _key, item in pairs]
        if claims and self.claims is not None:
            # Every claim is known to the QoS before any message is delivered or given
            # back, so that whatever goes back to the queue gives its claim back too.
            for payload, claim in zip(payloads, claims, strict=True):
                token = self.claims.stamp(payload, claim, self._brpop_sent_at)
                if token is not None:
                    self.qos.holds_claim(payload["properties"]["delivery_tag"], token)
        if self._closing or self.closed:
            # A closing channel reads its last answer here, and must keep nothing.
            self._restore_taken(pairs)
            raise Empty()
        for index, ((key, _item), payload) in enumerate(zip(pairs, payloads, strict=True)):
            self.qos.recorded(payload["properties"]["delivery_tag"])
            dest = key.rsplit(self.sep, 1)[0]
            try:
                self._queue_cycle.rotate(dest)
                self.connection._deliver(payload, dest)
            except BaseException:
                self._restore_taken(pairs[index + 1 :])
                raise
        return True

    def _restore_taken(self, pairs: list[tuple[str, bytes]]) -> None:
        """Messages taken but not delivered go back to the head of their queue at once,
        in their order (BRPOP takes from the right: the last pushed right is next)."""
        for _key, item in reversed(pairs):
            tag = loads(bytes_to_str(item))["properties"]["delivery_tag"]
            self.qos.recorded(tag, recorded=False)
            self.qos.restore_by_tag(tag, leftmost=False)

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        if getattr(self.connection, "client", None) is None:
            # The broker connection was released (Celery restarting its consumer after
            # Redis went away): no pool can be made for it, and kombu would fail with an
            # AttributeError that stops the worker. A Redis error instead: acknowledgements
            # wait for the next flush, restores for the next sweep, and the consumer
            # reconnects.
            raise redis.ConnectionError("the broker connection was released; reconnecting")
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


def _at_most_every(call: Any, seconds: Any) -> Any:
    """`call`, skipped when it last ran less than `seconds()` ago."""
    last = [0.0]

    def limited() -> Any:
        now = time.monotonic()
        if now - last[0] < seconds():
            return None
        last[0] = now
        return call()

    return limited


# The longest a full gevent worker's loop waits for free slots before it looks again.
FULL_POLL_SECONDS = 0.02
# ... and the share of its slots whose acknowledgements wake it sooner (at least one).
# At 100 sleeps of 0.1 s, a hundredth (every freed slot) left a slot empty 3.5-4 ms
# against 8 ms for a tenth, 83-87 % of ideal against 81-82 %, for 15 % more CPU a job
# (a take per slot or two); no-ops and -c500 moved by no more than the noise
# (docs/performance.md, "What each change moved").
WAKE_AT_FREE_SHARE = 0.01


class Transport(kombu_redis.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set by an acknowledgement (services/broker/qos.py); a gevent worker patched
        # `threading` before this was built, so its wait lets the jobs' greenlets run.
        self._slot_freed = threading.Event()
        # kombu scans for timed-out unacked messages on every empty poll of a loop
        # without a timer (gevent's); with the short polls below that was dozens of scans
        # a second. Once per restore interval is what kombu's timer gives the others.
        self.cycle.maybe_restore_messages = _at_most_every(
            self.cycle.maybe_restore_messages, self._restore_interval
        )

    def _restore_interval(self) -> float:
        intervals = [c.unacked_restore_interval for c in self.channels if c.active_queues]
        return float(min(intervals, default=1))

    def slot_freed(self, qos: Any) -> None:
        """A message of `qos` was acknowledged: a full worker's loop asks for more now if
        WAKE_AT_FREE_SHARE of its slots (at least one) are free."""
        room = qos.can_consume_max_estimate()  # None: no prefetch limit, never full
        if room is None or room >= max(1, int(qos.prefetch_count * WAKE_AT_FREE_SHARE)):
            self._slot_freed.set()

    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:
        # With every prefetch slot taken no BRPOP is outstanding, and nothing wakes the
        # loop of a gevent worker (Celery's synloop) when a job ends: it slept out its
        # 2 s poll before asking for more, so a full worker refilled every 2 s (seen
        # once the takes above filled 500 slots). While full, it waits until
        # WAKE_AT_FREE_SHARE of its slots are free, or FULL_POLL_SECONDS (a 20 ms poll
        # alone left a slot idle 28 ms a job at 100 sleeps of 0.1 s: docs/performance.md).
        # Workers with an event loop (threads, prefork) acknowledge on that loop, which
        # asks for more right away; they never come here.
        if timeout is not None and self._a_channel_is_full():
            # Cleared before the second look: an acknowledgement between the two is
            # not lost, it sets the event again.
            self._slot_freed.clear()
            if self._a_channel_is_full():
                self._slot_freed.wait(min(timeout, FULL_POLL_SECONDS))
            if self._a_channel_is_full():
                timeout = 0  # still full: kombu's empty-poll duties, then back here
        return super().drain_events(connection, timeout=timeout)

    def _a_channel_is_full(self) -> bool:
        return any(
            channel.active_queues and not channel.qos.can_consume() for channel in self.channels
        )


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """Our channel on kombu's Sentinel channel: every change above, with connections
    made by a pool that asks the sentinels where the master is (kombu's), so the
    consumer, the publisher and the acknowledgements all reconnect to a new master.

    The sentinels come from the `sentinels` transport option, not from the broker URL's
    alternates as in kombu: see `sentinel_broker`.
    """

    from_transport_options = (*kombu_redis.SentinelChannel.from_transport_options, "sentinels")
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        # kombu's own, but for where the list of sentinels comes from.
        if not self.master_name or not self.sentinels:
            raise ValueError("the 'master_name' and 'sentinels' transport options are needed")
        params = self._connparams(asynchronous)
        params.pop("host", None)
        params.pop("port", None)
        manager = redis.sentinel.Sentinel(
            [tuple(address) for address in self.sentinels],
            min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None),
            **params,
        )
        # Kept, so kombu's _disconnect_pools closes its connections to the sentinels.
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        credentials = {key: params[key] for key in ("username", "password") if key in params}
        master = manager.master_for(self.master_name, redis.Redis, **credentials)
        return master.connection_pool


class SentinelTransport(Transport):
    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port


def sentinel_broker(settings: Settings) -> dict[str, Any]:
    """Celery's broker_url and broker_transport for a sentinel:// REDIS_URL (nothing for
    another): one sentinel's URL, and our Sentinel transport.

    Not the URL itself: kombu takes each `;`-separated part for an alternate broker, and
    on a connection error (every failover has some) switches to the next one by parsing
    its URL again, which puts kombu's own transport of the scheme in place of the one
    configured (kombu/connection.py, Connection.switch): the API's publisher, and a
    worker's consumer, would go on without the changes above. With one URL there is
    nothing to switch to, and the channel asks every sentinel (`sentinel_options`).
    """
    if not is_sentinel_url(settings.redis_url):
        return {}
    first = settings.redis_url.split(";", 1)[0].strip()
    return {"broker_url": first, "broker_transport": SENTINEL_TRANSPORT_PATH}


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """The transport options of a sentinel:// REDIS_URL (nothing for another): the
    master's name and every sentinel."""
    if not is_sentinel_url(settings.redis_url):
        return {}
    target = sentinel_target(settings.redis_url)
    return {"master_name": settings.redis_sentinel_master, "sentinels": list(target.sentinels)}
