"""/me: the calling key's name and scopes, so a client (the dashboard) can offer only what
the key may do. It reveals nothing the caller does not hold: its own key's name and scopes."""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, g
from pydantic import BaseModel, Field
from spectree import Response as SpecResponse

from api.auth import SCOPES, parse_keys
from api.context import api_context
from api.openapi import spec
from api.responses import json_response

blueprint = Blueprint("me", __name__)


class KeyIdentity(BaseModel):
    """Who the API takes the caller for."""

    name: str = Field(..., description="The key's name ('anonymous' with auth off).")
    scopes: list[str] = Field(
        ..., description="What it may do: read (GET), submit (jobs, retry), admin (cancel, lab)."
    )
    auth: Literal["on", "off"] = Field(..., description="JOBRUNNER_AUTH: 'off' lets anyone in.")


@blueprint.get("/me")
@spec.validate(resp=SpecResponse(HTTP_200=KeyIdentity), tags=["auth"], skip_validation=True)
def whoami() -> Response:
    """The calling key's name and scopes."""
    settings = api_context().settings
    if settings.jobrunner_auth == "off":
        return json_response(KeyIdentity(name=g.client_name, scopes=list(SCOPES), auth="off"))
    # The before-request hook identified the key and kept its name; names are unique
    # (parse_keys refuses two keys under one), so the name finds its scopes.
    key = next(k for k in parse_keys(settings.jobrunner_api_keys) if k.name == g.client_name)
    scopes = [scope for scope in SCOPES if scope in key.scopes]
    return json_response(KeyIdentity(name=key.name, scopes=scopes, auth="on"))
