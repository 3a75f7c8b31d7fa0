"""How much work each pool has: queued in Redis plus taken by a worker and not yet done.

What an autoscaler must count (KEDA reads it from GET /scaling). The length of a pool's
list alone is not it: a busy fleet takes messages as fast as they come (each worker fills
its free slots in one round trip, services/broker/transport.py), so the list reads ~0
while every slot is running a job, and a scaler reading it would scale the fleet in
under full load. A taken message stays in kombu's `unacked` hash until its job is done
(late acknowledgement, services/broker/celery_app.py), so queued + taken is the work in
the system: the jobs waiting and the jobs running (or prefetched).

Read in one round trip: LLEN of every priority list of every pool, and the unacked hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import redis

from services.broker.transport import Channel
from services.catalog.pools import POOLS


@dataclass(frozen=True)
class QueueDepth:
    queued: int  # messages in the pool's lists, not yet taken by any worker
    taken: int  # taken by a worker, not acknowledged: running, or prefetched to run next

    @property
    def depth(self) -> int:
        return self.queued + self.taken


def priority_lists(queue: str) -> list[str]:
    """Every Redis list kombu keeps `queue` in: the queue's own name for priority 0, and
    `<queue><sep><step>` for each other priority step (kombu's `Channel._q_for_pri`).
    A message sent with a priority sits in one of the others."""
    return [queue] + [f"{queue}{Channel.sep}{step}" for step in Channel.priority_steps if step]


def queue_depths(client: redis.Redis) -> dict[str, QueueDepth]:
    """Queued, taken and their sum for every pool of services/catalog/pools.py, by name."""
    lists = {name: priority_lists(pool.queue) for name, pool in POOLS.items()}
    pipe = client.pipeline(transaction=False)
    for keys in lists.values():
        for key in keys:
            pipe.llen(key)
    # HVALS, not HSCAN: the hash holds one entry per message some worker holds, so it is
    # bounded by the fleet's slots (concurrency x prefetch multiplier 1 x replicas), a few
    # thousand entries of about a kilobyte even for a large gevent fleet: one reply, read
    # in one round trip. HSCAN would cost a round trip per page for the same data.
    pipe.hvals(Channel.unacked_key)
    *lengths, unacked = pipe.execute()
    taken = _taken_by_queue(unacked)
    depths: dict[str, QueueDepth] = {}
    position = 0
    for name, keys in lists.items():
        queued = sum(lengths[position : position + len(keys)])
        position += len(keys)
        depths[name] = QueueDepth(queued=queued, taken=taken.get(POOLS[name].queue, 0))
    return depths


def _taken_by_queue(entries: list[str | bytes]) -> dict[str, int]:
    """Unacked entries counted by routing key. Each is `[message, exchange, routing_key]`
    (kombu's QoS.append, and take.lua); Celery routes a job to its pool's queue with that
    queue's name as routing key."""
    counts: dict[str, int] = {}
    for entry in entries:
        try:
            routing_key = orjson.loads(entry)[2]
        except (orjson.JSONDecodeError, IndexError, TypeError, KeyError):
            continue  # not kombu's: nothing a worker will run
        if isinstance(routing_key, str):
            counts[routing_key] = counts.get(routing_key, 0) + 1
    return counts
