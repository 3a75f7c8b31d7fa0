"""The API's own metrics: its requests by route and status, and how long each took.

Kept by each API process in prometheus_client's metrics. Under gunicorn every worker
process writes them to files in PROMETHEUS_MULTIPROC_DIR (api/gunicorn_conf.py sets it up),
so a scrape, whichever process answers it, reports the sum over all of them. This module
must be imported only once that variable is set: prometheus_client reads it on import.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "jobrunner_http_requests_total",
    "HTTP requests the API answered, by route (the URL rule, e.g. /jobs/<job_id:job_id>), "
    "method and status code.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "jobrunner_http_request_duration_seconds",
    "Time the API took to answer a request, from its first hook to its response, by route "
    "and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# The route of a request no rule matched (a 404, a 405): one series for all of them, so a
# scanner trying random paths cannot make a series per path.
UNMATCHED = "unmatched"
# Likewise any method HTTP does not define.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def install_request_metrics(app: Flask) -> None:
    """Count and time every request. Installed before authentication, so a refused
    request (401, 403, 429) is counted and timed like any other."""

    @app.before_request
    def _start_clock() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.get("metrics_started")
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        REQUESTS.labels(route, method, str(response.status_code)).inc()
        if started is not None:
            LATENCY.labels(route, method).observe(time.perf_counter() - started)
        return response
