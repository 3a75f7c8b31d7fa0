"""JSON answers built from the response models, one way for every blueprint."""

from __future__ import annotations

from flask import Response, url_for
from pydantic import BaseModel

from services.jobs.record import JobRecord


def json_response(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status, mimetype="application/json")


def record_response(record: JobRecord, status: int = 200) -> Response:
    """A job record; a 202 carries the Location to poll."""
    response = json_response(record, status)
    if status == 202:
        response.headers["Location"] = url_for("jobs.get_job", job_id=record.id)
    return response
