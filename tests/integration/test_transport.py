"""services/broker/transport.py and qos.py against a real Redis, at the edges:
Redis away during an acknowledgement, a channel closing, a message the take cannot read.

Each test has a redis-server of its own, so it can stop and start it.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from kombu import Connection

from services.broker.transport import TAKE_SCRIPT, Transport
from services.devstack.redis_server import RedisServer


def consuming(server: RedisServer, prefetch: int) -> tuple[Connection, object, list]:
    """A connection with one acknowledging consumer on queue "q", and what it got."""
    connection = Connection(server.url, transport=Transport)
    connection.connect()
    channel = connection.channel()
    channel.queue_declare("q")
    channel.basic_qos(prefetch_count=prefetch)
    got: list = []
    channel.basic_consume("q", no_ack=False, callback=got.append, consumer_tag="t")
    return connection, channel, got


def publish(channel: object, count: int) -> None:
    for i in range(count):
        message = channel.prepare_message(json.dumps({"i": i}), content_type="application/json")
        channel.basic_publish(message, exchange="", routing_key="q")


def held(server: RedisServer, tag: str) -> bool:
    client = redis.Redis.from_url(server.url)
    return bool(client.hexists("unacked", tag)) or client.zscore("unacked_index", tag) is not None


def eventually(check: object, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_an_acknowledgement_redis_missed_is_sent_when_it_returns(server: RedisServer) -> None:
    connection, channel, got = consuming(server, prefetch=4)
    publish(channel, 1)
    connection.drain_events(timeout=5)
    tag = got[0].delivery_tag
    assert held(server, tag)
    server.stop()
    channel.basic_ack(tag)  # its deletion fails while Redis is away...
    time.sleep(0.5)
    server.start()
    # ...and is sent again once it is back, though the consumer stays idle.
    assert eventually(lambda: not held(server, tag))
    connection.release()


def test_an_acknowledgement_after_the_channel_closed_is_deleted(server: RedisServer) -> None:
    # The connection is lost while a job runs; the job ends after the channel closed.
    connection, channel, got = consuming(server, prefetch=4)
    publish(channel, 1)
    connection.drain_events(timeout=5)
    message = got[0]
    server.stop()
    with pytest.raises(redis.ConnectionError):
        channel.close()  # gives the held message back: it cannot, Redis is away
    server.start()
    message.ack()
    assert not held(server, message.delivery_tag)


def test_a_closing_channel_takes_no_more(server: RedisServer) -> None:
    connection, channel, got = consuming(server, prefetch=50)
    publish(channel, 20)
    connection.transport.cycle._register_BRPOP(channel)  # a BRPOP is outstanding...
    channel.close()  # ...and close reads its answer: that one message, no take after it
    assert len(got) <= 1
    assert redis.Redis.from_url(server.url).llen("q") == 20  # and it was handed back


def test_a_take_leaves_a_message_it_cannot_read_in_place(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)

    def message(tag: object) -> str:
        properties = {"delivery_tag": tag, "delivery_info": {"exchange": "", "routing_key": "q"}}
        return json.dumps({"body": "e30=", "headers": {}, "properties": properties})

    client.lpush("q", message("tag-1"), message(None), message("tag-2"))  # taken in this order
    taken = client.register_script(TAKE_SCRIPT)(
        keys=["unacked_index", "unacked", "q"], args=[10, 1, 0]
    )
    assert [json.loads(item)["properties"]["delivery_tag"] for item in taken[1::2]] == ["tag-1"]
    # Nothing recorded halfway: the unreadable message and the one behind it wait, in order.
    assert client.hkeys("unacked") == [b"tag-1"]
    assert [json.loads(m)["properties"]["delivery_tag"] for m in client.lrange("q", 0, -1)] == [
        "tag-2",
        None,
    ]


def test_a_take_of_many_costs_one_rpop_zadd_and_hset(server: RedisServer) -> None:
    """Redis counts the commands a script runs: one RPOP of many and one ZADD and HSET for
    all it took, not three commands a message (and an RPOP that finds the list empty)."""
    client = redis.Redis.from_url(server.url)
    client.delete("q", "unacked_index", "unacked")

    def message(n: int) -> str:
        properties = {
            "delivery_tag": f"t{n}",
            "delivery_info": {"exchange": "", "routing_key": "q"},
        }
        return json.dumps({"body": "e30=", "headers": {}, "properties": properties})

    client.lpush("q", *(message(n) for n in range(50)))
    take = client.register_script(TAKE_SCRIPT)
    take(keys=["unacked_index", "unacked", "q"], args=[0, 1, 0])  # loaded, takes nothing
    before = client.info("commandstats")
    taken = take(keys=["unacked_index", "unacked", "q"], args=[100, 1, 0])
    after = client.info("commandstats")

    def calls(command: str) -> int:
        key = f"cmdstat_{command}"
        return after.get(key, {}).get("calls", 0) - before.get(key, {}).get("calls", 0)

    # Oldest first, every one recorded as unacked.
    assert [json.loads(m)["properties"]["delivery_tag"] for m in taken[1::2]] == [
        f"t{n}" for n in range(50)
    ]
    assert client.hlen("unacked") == client.zcard("unacked_index") == 50
    assert (calls("rpop"), calls("zadd"), calls("hset")) == (1, 1, 1)
