"""GET /metrics: everything Prometheus scrapes of jobrunner, in its text format.

One scrape of one API process gives all of it: the API's request metrics, summed over its
gunicorn processes (api/metrics_http.py), and the cluster's, read at scrape time from
Redis and the workers (api/metrics_cluster.py). It needs a key with the `metrics` scope
(api/auth.py), so Prometheus can hold a key that can do nothing else. docs/observability.md
lists every series.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from flask import Blueprint, Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from spectree import SpecTree

from api.context import api_context
from api.metrics_cluster import ClusterCollector

blueprint = Blueprint("metrics", __name__)

# Prometheus's format is no JSON API: out of /openapi.json and its schema tests. spectree
# documents every route but those another SpecTree instance decorates (as
# api/dashboard.py does for its pages); this one is never registered, so it serves nothing.
OUTSIDE_THE_API_DOCUMENT = SpecTree("flask").validate(skip_validation=True)

# How long a scrape waits for the workers to answer Celery's inspection (as GET /pools).
INSPECT_TIMEOUT_SECONDS = 1.0


class _ThisProcess(Collector):
    """The metrics of this process alone, when it is the only one (no gunicorn: a test's
    app, `flask run`)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


@blueprint.get("/metrics")
@OUTSIDE_THE_API_DOCUMENT
def metrics() -> Response:
    """Prometheus's text format: the API's requests and the cluster's jobs, queues and
    workers."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every gunicorn process's files, whichever process answers.
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    ctx = api_context()
    registry.register(ClusterCollector(ctx.store.redis, ctx.celery, INSPECT_TIMEOUT_SECONDS))
    return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)
