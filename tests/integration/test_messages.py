"""A job's message, stamped from a template, is what Celery's send_task would have pushed."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import pytest
import redis
from celery import Celery

from services.broker.celery_app import RUN_JOB_TASK, make_celery
from services.broker.messages import MessageFactory
from services.catalog.pools import POOLS
from services.core.settings import Settings
from services.core.vocabulary import JobState
from services.devstack.redis_server import RedisServer
from services.jobs.store import JobStore
from services.jobs.submission import JobSpec, submit_jobs
from tests.stack import Stack


def sent_by_celery(celery: Celery, job_id: str, queue: str, time_limit: int | None) -> tuple:
    options = {"time_limit": time_limit} if time_limit is not None else {}
    with celery.producer_or_acquire() as producer, producer.channel.collecting() as collected:
        celery.send_task(
            RUN_JOB_TASK, args=[job_id], task_id=job_id, queue=queue, producer=producer, **options
        )
    [(key, payload)] = collected
    return key, json.loads(payload)


@pytest.mark.parametrize(("queue", "time_limit"), [("pool.threads", None), ("pool.prefork", 7)])
def test_stamped_message_equals_celerys_own(
    stack: Stack, queue: str, time_limit: int | None
) -> None:
    settings = Settings(redis_url=stack.redis_server.url)
    job_id = str(uuid.uuid4())
    celery = make_celery(settings)
    factory = MessageFactory(celery)

    key, payload = factory.message(job_id, queue, time_limit)
    celery_key, celery_message = sent_by_celery(celery, job_id, queue, time_limit)

    ours = json.loads(payload)
    assert key == celery_key == queue
    # kombu keys unacknowledged messages by delivery tag: each message has its own.
    tag, celery_tag = (
        ours["properties"].pop("delivery_tag"),
        celery_message["properties"].pop("delivery_tag"),
    )
    assert tag != celery_tag and uuid.UUID(tag)
    assert ours == celery_message
    _, again = factory.message(job_id, queue, time_limit)
    assert json.loads(again)["properties"]["delivery_tag"] != tag


def test_only_canonical_uuids_are_stamped(stack: Stack) -> None:
    factory = MessageFactory(make_celery(Settings(redis_url=stack.redis_server.url)))
    with pytest.raises(ValueError, match="canonical UUIDs"):
        factory.message('x", "task": "os.system', "pool.threads", None)


def test_a_batch_keeps_its_order_and_its_records(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every message has its record, and the messages keep the submission order (kombu
    pops from the tail). A pool no worker serves keeps the messages where they were put."""
    monkeypatch.setitem(POOLS, "unserved", dataclasses.replace(POOLS["threads"], name="unserved"))
    settings = Settings(redis_url=stack.redis_server.url)
    store = JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), 3600)
    specs = [JobSpec("noop", {"value": i}, "unserved") for i in range(5)]
    records = submit_jobs(store, make_celery(settings), specs)
    queue = POOLS["unserved"].queue
    popped = [json.loads(stack.redis().rpop(queue))["headers"]["id"] for _ in range(5)]
    assert popped == [r.id for r in records]
    assert stack.redis().llen(queue) == 0
    assert [store.get(r.id).params for r in records] == [{"value": i} for i in range(5)]
    # No worker will ever run them: out of the queued index, or the reconciler re-sends.
    for record in records:
        store.transition(record.id, {JobState.queued}, JobState.cancelled)


@pytest.mark.parametrize("count", [1, 1_000])
def test_a_batch_is_one_round_trip_however_many_jobs(tmp_path: Path, count: int) -> None:
    """Records, index entries and messages go in one script call: one EVALSHA, one LPUSH
    per queue and one ZADD per index, for 1 job as for 1,000 (a private Redis, so no
    worker's commands are counted)."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        settings = Settings(redis_url=server.url)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        store, celery = JobStore(client, 3600), make_celery(settings)
        submit_jobs(store, celery, [JobSpec("noop", {}, "threads")])  # loads the script
        client.config_resetstat()
        submit_jobs(store, celery, [JobSpec("noop", {"value": i}, "threads") for i in range(count)])
        calls = {
            name.removeprefix("cmdstat_"): s["calls"]
            for name, s in client.info("commandstats").items()
        }
        assert calls["evalsha"] == 1 and calls["lpush"] == 1 and calls["zadd"] == 4
        assert calls["hset"] == calls["expire"] == count
        assert client.llen(POOLS["threads"].queue) == count + 1
    finally:
        server.stop()
