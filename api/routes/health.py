"""/healthz (the process answers) and /readyz (it can reach Redis)."""

import redis
from flask import Blueprint, Response
from spectree import Response as SpecResponse

from api.context import api_context
from api.errors import Problem, problem_responses
from api.models import Health
from api.openapi import spec

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@spec.validate(resp=SpecResponse(HTTP_200=Health), tags=["health"], skip_validation=True)
def healthz() -> Response:
    """The process is up."""
    return Response(Health(status="ok").model_dump_json(), mimetype="application/json")


@blueprint.get("/readyz")
@spec.validate(
    resp=SpecResponse(HTTP_200=Health, **problem_responses(503)),
    tags=["health"],
    skip_validation=True,
)
def readyz() -> Response:
    """Redis answers; 503 with Retry-After otherwise, like every other answer while Redis
    is away (a load balancer or client polling readiness knows when to look again)."""
    try:
        api_context().store.redis.ping()
    except redis.RedisError:
        raise Problem(
            503, "Service Unavailable", "Redis is not reachable", headers={"Retry-After": "1"}
        ) from None
    return Response(Health(status="ready").model_dump_json(), mimetype="application/json")
