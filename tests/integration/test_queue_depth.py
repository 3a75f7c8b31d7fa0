"""services/broker/queue_depth.py reads the keys kombu itself writes: a queue's list per
message priority, and the unacked hash of what consumers hold."""

from __future__ import annotations

from kombu import Connection, Exchange, Queue

from services.broker.queue_depth import QueueDepth, queue_depths
from services.broker.transport import Transport
from services.catalog.pools import POOLS
from services.core.redis_clients import redis_client
from services.devstack.redis_server import RedisServer

POOL = "threads"


def test_depth_counts_every_priority_and_what_consumers_hold(server: RedisServer) -> None:
    name = POOLS[POOL].queue
    # How Celery routes a job to `queue=name`: an exchange and a routing key of that name.
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(server.url, transport=Transport) as connection:
        with connection.Producer() as producer:
            for priority in (0, 3, 6, 9, 9, 1):
                producer.publish(
                    {"priority": priority}, exchange=queue.exchange, routing_key=name,
                    declare=[queue], priority=priority,
                )  # fmt: skip
        assert queue_depths(redis_client(server.url))[POOL] == QueueDepth(queued=6, taken=0)

        # A consumer that takes two and acknowledges neither, as a worker running them.
        channel = connection.channel()
        channel.basic_qos(prefetch_count=2)
        held: list = []
        channel.basic_consume(name, no_ack=False, callback=held.append, consumer_tag="worker")
        while len(held) < 2:
            try:
                connection.drain_events(timeout=2)
            except TimeoutError:
                break
        assert len(held) == 2

        depths = queue_depths(redis_client(server.url))
        assert depths[POOL] == QueueDepth(queued=4, taken=2)
        assert depths[POOL].depth == 6
        assert all(depths[other].depth == 0 for other in POOLS if other != POOL)

        for message in held:
            channel.basic_ack(message.delivery_tag)
        channel.qos.flush_acks()  # the ack's deletions wait for a round trip: send them now
        assert queue_depths(redis_client(server.url))[POOL] == QueueDepth(queued=4, taken=0)
