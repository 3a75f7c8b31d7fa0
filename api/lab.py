"""/lab/delay: answers after N ms, so http_get jobs do real network I/O on a laptop."""

import time

from flask import Blueprint, Response, request
from pydantic import ValidationError
from spectree import Response as SpecResponse

from api.errors import problem_responses, validation_problem
from api.models import DelayAnswer, DelayQuery
from api.openapi import spec

blueprint = Blueprint("lab", __name__)


@blueprint.get("/lab/delay")
@spec.validate(
    query=DelayQuery,
    resp=SpecResponse(HTTP_200=DelayAnswer, **problem_responses(422)),
    tags=["lab"],
    skip_validation=True,
)
def delay() -> Response:
    """Wait `ms` milliseconds, then answer."""
    try:
        query = DelayQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_problem(exc) from None
    time.sleep(query.ms / 1000)
    return Response(DelayAnswer(waited_ms=query.ms).model_dump_json(), mimetype="application/json")
