"""/scaling: the work each pool has, queued and taken, for an autoscaler to scale on.

KEDA's `metrics-api` trigger reads `pools.<pool>.depth` (deploy/k8s/base/scaling.yaml):
queued + taken, because the queue's length alone reads ~0 on a busy fleet
(services/broker/queue_depth.py). A `read` key is enough, like every GET.
"""

from __future__ import annotations

from flask import Blueprint, Response
from pydantic import BaseModel, Field
from spectree import Response as SpecResponse

from api.context import api_context
from api.errors import problem_responses
from api.openapi import spec
from api.responses import json_response
from services.broker.queue_depth import queue_depths
from services.core.vocabulary import PoolName

blueprint = Blueprint("scaling", __name__)


class PoolDepth(BaseModel):
    queued: int = Field(ge=0, description="Jobs waiting in the pool's queue.")
    taken: int = Field(
        ge=0,
        description="Jobs a worker has taken and not finished: running, or prefetched.",
    )
    depth: int = Field(ge=0, description="queued + taken: what an autoscaler scales on.")


class Scaling(BaseModel):
    """The work of every pool; KEDA reads `pools.<pool>.depth`."""

    pools: dict[PoolName, PoolDepth]


@blueprint.get("/scaling")
@spec.validate(
    resp=SpecResponse(HTTP_200=Scaling, **problem_responses(503)),
    tags=["pools"],
    skip_validation=True,
)
def scaling() -> Response:
    """Each pool's queued and taken jobs, and their sum (`depth`), in one Redis round trip."""
    # Without Redis this is a 503 (api/errors.py), never a made-up 0: KEDA counts a failed
    # read towards its fallback replica count, where a 0 would scale the pools in.
    depths = queue_depths(api_context().store.redis)
    body = Scaling(
        pools={
            name: PoolDepth(queued=d.queued, taken=d.taken, depth=d.depth)
            for name, d in depths.items()
        }
    )
    return json_response(body)
