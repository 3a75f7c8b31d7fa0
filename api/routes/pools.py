"""/pools: each pool, what it can enforce, and its live workers: which queue each consumes
(Celery's inspection) and where it runs (host, node, pid), as each says of itself."""

from __future__ import annotations

from flask import Blueprint, Response
from spectree import Response as SpecResponse

from api.context import api_context
from api.errors import problem_responses
from api.models import PoolCapabilities, PoolInfo, PoolList, WorkerInfo
from api.openapi import spec
from api.responses import json_response
from services.broker.inspection import LiveWorker, live_workers
from services.catalog.pools import POOLS

blueprint = Blueprint("pools", __name__)

# How long GET /pools waits for workers to answer the broadcast.
INSPECT_TIMEOUT_SECONDS = 1.0


@blueprint.get("/pools")
@spec.validate(
    resp=SpecResponse(HTTP_200=PoolList, **problem_responses(503)),
    tags=["pools"],
    skip_validation=True,
)
def list_pools() -> Response:
    """The pools, their capabilities, queue depth and the workers serving them now."""
    workers = live_workers(api_context().celery, INSPECT_TIMEOUT_SECONDS)
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
                workers=[worker_info(w) for w in workers[p.name]],
                queued=redis.llen(p.queue),
            )
            for p in POOLS.values()
        ]
    )
    return json_response(body)


def worker_info(worker: LiveWorker) -> WorkerInfo:
    return WorkerInfo(
        node=worker.node,
        concurrency=worker.concurrency,
        pid=worker.pid,
        host=worker.host,
        cores=worker.cores,
        rtt_ms_to_redis=worker.rtt_ms_to_redis,
    )
