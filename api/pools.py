"""/pools: each pool, what it can enforce, and its live workers from Celery's inspection."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from spectree import Response as SpecResponse

from api.context import api_context
from api.errors import problem_responses
from api.models import PoolCapabilities, PoolInfo, PoolList, WorkerInfo
from api.openapi import spec
from services.pools import POOLS

blueprint = Blueprint("pools", __name__)

# How long GET /pools waits for workers to answer the broadcast.
INSPECT_TIMEOUT_SECONDS = 1.0


def live_workers() -> dict[str, list[WorkerInfo]]:
    """Workers that answered, grouped by the pool whose queue they consume."""
    inspect = api_context().celery.control.inspect(timeout=INSPECT_TIMEOUT_SECONDS)
    queues: dict[str, Any] = inspect.active_queues() or {}
    stats: dict[str, Any] = inspect.stats() or {}
    by_queue = {p.queue: p.name for p in POOLS.values()}
    found: dict[str, list[WorkerInfo]] = {name: [] for name in POOLS}
    for node, consumed in sorted(queues.items()):
        node_stats = stats.get(node, {})
        for queue in consumed:
            pool = by_queue.get(queue.get("name"))
            if pool:
                found[pool].append(
                    WorkerInfo(
                        node=node,
                        concurrency=node_stats.get("pool", {}).get("max-concurrency"),
                        pid=node_stats.get("pid"),
                    )
                )
    return found


@blueprint.get("/pools")
@spec.validate(
    resp=SpecResponse(HTTP_200=PoolList, **problem_responses(503)),
    tags=["pools"],
    skip_validation=True,
)
def list_pools() -> Response:
    """The pools, their capabilities, queue depth and the workers serving them now."""
    workers = live_workers()
    redis = api_context().store.redis
    body = PoolList(
        pools=[
            PoolInfo(
                name=p.name,
                queue=p.queue,
                suited_to=p.suited_to,
                capabilities=PoolCapabilities(
                    hard_time_limit=p.hard_time_limit,
                    terminate_running=p.terminate_running,
                    memory_isolation=p.memory_isolation,
                ),
                workers=workers[p.name],
                queued=redis.llen(p.queue),
            )
            for p in POOLS.values()
        ]
    )
    return Response(body.model_dump_json(), 200, mimetype="application/json")
