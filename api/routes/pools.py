"""/pools: each pool, what it can enforce, and its live workers: which queue each consumes
(Celery's inspection), where it runs (host, node, pid), as each says of itself, and
whether its workload catalog is the API's (a worker started without the user's module
fails those jobs: this is where the operator sees it before a job does)."""

from __future__ import annotations

from flask import Blueprint, Response
from spectree import Response as SpecResponse

from api.context import api_context
from api.errors import problem_responses
from api.models import CatalogMismatch, PoolCapabilities, PoolInfo, PoolList, WorkerInfo
from api.openapi import spec
from api.responses import json_response
from services.broker.inspection import LiveWorker, live_workers
from services.catalog.pools import POOLS
from services.catalog.workloads import FINGERPRINT, catalog_difference

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
    """The pools, their capabilities, queue depth, the workers serving them now, and
    which of those have another workload catalog than the API."""
    workers = live_workers(api_context().celery, INSPECT_TIMEOUT_SECONDS)
    redis = api_context().store.redis
    pools = []
    for p in POOLS.values():
        mismatches = [m for w in workers[p.name] if (m := catalog_mismatch(w)) is not None]
        pools.append(
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
                catalog_matches=not mismatches,
                catalog_mismatch=mismatches,
            )
        )
    # A worker consuming several pools' queues is one worker: named once.
    every = {m.worker: m for pool in pools for m in pool.catalog_mismatch}
    body = PoolList(
        pools=pools,
        catalog=FINGERPRINT,
        catalog_matches=not every,
        catalog_mismatch=list(every.values()),
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
        catalog=worker.catalog,
        catalog_matches=None if worker.catalog is None else worker.catalog == FINGERPRINT,
    )


def catalog_mismatch(worker: LiveWorker) -> CatalogMismatch | None:
    """How the worker's catalog differs from the API's; None when it does not, or when
    the worker did not say (one of an older version)."""
    if worker.catalog is None or worker.catalog == FINGERPRINT:
        return None
    difference = catalog_difference(worker.workloads or {})
    return CatalogMismatch(
        worker=worker.node,
        catalog=worker.catalog,
        missing=difference.missing,
        extra=difference.extra,
        changed=difference.changed,
    )
