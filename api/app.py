"""The Flask application factory: `create_app(settings)`, one blueprint per resource."""

from __future__ import annotations

import logging

from flask import Flask, Response, json
from werkzeug.routing import BaseConverter

from api import dashboard
from api.auth import install_auth
from api.context import ApiContext
from api.errors import install_error_handlers
from api.metrics import blueprint as metrics_blueprint
from api.metrics_http import install_request_metrics
from api.openapi import document as openapi_document
from api.openapi import spec
from api.routes import batch, catalog, delay, experiments, health, jobs, me, pools, scaling
from services.broker.celery_app import make_celery
from services.core.redis_clients import redis_client
from services.core.settings import Settings, get_settings
from services.jobs.store import JobStore


class JobIdConverter(BaseConverter):
    """A job id: any path segment but "batch", so /jobs/batch is never read as a job
    (and OPTIONS /jobs/batch advertises only its own methods)."""

    regex = r"(?!batch/?$)[^/]+"


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask("jobrunner")
    app.url_map.converters["job_id"] = JobIdConverter
    # Flask answers 413 for a larger body before any view reads it.
    app.config["MAX_CONTENT_LENGTH"] = settings.job_max_body_bytes
    # A cut network to Redis answers 503 within REDIS_SOCKET_TIMEOUT, not TCP's minutes.
    client = redis_client(settings.redis_url, settings=settings)
    app.extensions["jobrunner"] = ApiContext(
        settings=settings,
        store=JobStore(client, settings.job_result_ttl),
        celery=make_celery(settings),
    )
    for module in (batch, jobs, catalog, pools, scaling, health, delay, experiments, me, dashboard):
        app.register_blueprint(module.blueprint)
    # GET /metrics: Prometheus's format, behind a scope of its own (api/metrics.py).
    app.register_blueprint(metrics_blueprint)
    install_error_handlers(app)
    # Before auth: a refused request is counted too.
    install_request_metrics(app)
    install_auth(app)
    spec.register(app)

    @app.get("/openapi.json")
    def openapi() -> Response:
        """The OpenAPI 3.1 document of this API."""
        return Response(json.dumps(openapi_document()), mimetype="application/json")

    # spectree's own copy (/apidoc/openapi.json, which its pages read) is the same
    # document, so a generator pointed at either gets the same plain class names.
    app.view_functions["openapi_apidoc"] = openapi

    logging.basicConfig(level=logging.INFO)
    return app
