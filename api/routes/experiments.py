"""/experiments: run the same workload on pools and local executors, and compare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, request, url_for
from pydantic import ValidationError
from spectree import Response as SpecResponse

from api.context import api_context
from api.errors import FieldError, Problem, found, problem_responses, validation_problem
from api.models import (
    CompareQuery,
    Comparison,
    ComparisonRow,
    ComparisonRun,
    ExperimentList,
    ExperimentListQuery,
)
from api.openapi import spec
from api.responses import json_response
from api.submissions import json_body
from services.broker.celery_app import EXPERIMENT_QUEUE, RUN_EXPERIMENT_TASK
from services.catalog.workloads import WorkloadError
from services.lab.chart import render_comparison
from services.lab.experiment_store import ExperimentStore
from services.lab.experiments import (
    Experiment,
    ExperimentReport,
    ExperimentRequest,
    validate_request,
)
from services.lab.metrics import TargetReport

blueprint = Blueprint("experiments", __name__)


def experiment_store() -> ExperimentStore:
    ctx = api_context()
    return ExperimentStore(ctx.store.redis, ctx.settings.job_result_ttl)


def find_experiment(experiment_id: str) -> Experiment:
    return found(experiment_store().get(experiment_id), f"no experiment {experiment_id!r}")


@blueprint.post("/experiments")
@spec.validate(
    json=ExperimentRequest,
    resp=SpecResponse(HTTP_202=Experiment, **problem_responses(400, 413, 422, 503)),
    tags=["lab"],
    skip_validation=True,
)
def create_experiment() -> Response:
    """Start an experiment; it runs in the background on the experiment worker, one target at a
    time. Poll the Location for progress, then the report."""
    body = json_body()
    if not isinstance(body, dict):
        raise Problem(422, "Validation failed", "the body must be a JSON object")
    try:
        experiment_request = validate_request(body)
    except ValidationError as exc:
        raise validation_problem(exc) from None
    except WorkloadError as exc:
        raise Problem(
            422,
            "Validation failed",
            f"params.url: {exc}",
            [FieldError(field="params.url", message=str(exc))],
        ) from None
    store = experiment_store()
    experiment = store.create(experiment_request)
    try:
        api_context().celery.send_task(
            RUN_EXPERIMENT_TASK, args=[experiment.id], queue=EXPERIMENT_QUEUE, retry=False
        )
    except Exception:
        store.delete(experiment.id)
        raise Problem(503, "Service Unavailable", "Redis did not take the experiment") from None
    response = json_response(experiment, 202)
    response.headers["Location"] = url_for(
        "experiments.get_experiment", experiment_id=experiment.id
    )
    return response


@blueprint.get("/experiments")
@spec.validate(
    query=ExperimentListQuery, resp=SpecResponse(HTTP_200=ExperimentList, **problem_responses(422)),
    tags=["lab"], skip_validation=True,
)  # fmt: skip
def list_experiments() -> Response:
    """Past and running experiments, newest first."""
    try:
        query = ExperimentListQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_problem(exc) from None
    return json_response(ExperimentList(experiments=experiment_store().recent(query.limit)))


@blueprint.get("/experiments/compare")
@spec.validate(
    query=CompareQuery, resp=SpecResponse(HTTP_200=Comparison, **problem_responses(404, 422)),
    tags=["lab"], skip_validation=True,
)  # fmt: skip
def compare_experiments() -> Response:
    """Several finished experiments side by side (say, 1 worker and 4 workers per pool, or
    a local run and a cluster run of the same workload): where each ran (hosts, cores,
    round trip to Redis), each target's figures in each, and the throughput ratio of the
    last to the first."""
    try:
        query = CompareQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_problem(exc) from None
    ids = [i for i in query.ids.split(",") if i]
    if len(ids) < 2:
        raise Problem(422, "Validation failed", "ids: name at least two experiments")
    experiments = [find_experiment(i) for i in ids]
    unfinished = [e.id for e in experiments if e.report is None]
    if unfinished:
        raise Problem(409, "Not finished", f"no report yet for {', '.join(unfinished)}")
    reports = {e.id: e.report for e in experiments if e.report is not None}
    runs = [comparison_run(experiment_id, report) for experiment_id, report in reports.items()]
    targets: list[str] = []
    for report in reports.values():
        targets += [t.target for t in report.targets if t.target not in targets]
    rows = []
    for target in targets:
        found = {
            experiment_id: next((t for t in report.targets if t.target == target), None)
            for experiment_id, report in reports.items()
        }
        values = by_experiment(found, lambda t: t.throughput_per_s)
        first, last = values[ids[0]], values[ids[-1]]
        rows.append(
            ComparisonRow(
                target=target,
                throughput_per_s=values,
                ratio_last_to_first=round(last / first, 3) if first and last else None,
                latency_p50_s=by_experiment(found, lambda t: t.latency_s.p50),
                peak_rss_bytes=by_experiment(found, lambda t: t.peak_rss_bytes),
                efficiency=by_experiment(found, lambda t: t.efficiency),
            )
        )
    return json_response(Comparison(experiments=experiments, runs=runs, rows=rows))


def comparison_run(experiment_id: str, report: ExperimentReport) -> ComparisonRun:
    topology = report.topology
    return ComparisonRun(
        id=experiment_id,
        workload=report.workload,
        params=report.params,
        count=report.count,
        where=topology.where,
        hosts=topology.hosts,
    )


def by_experiment(
    found: dict[str, TargetReport | None], figure: Callable[[TargetReport], Any]
) -> dict[str, Any]:
    """One figure of a target in each experiment (None where it was not run)."""
    return {i: figure(t) if t is not None else None for i, t in found.items()}


@blueprint.get("/experiments/<experiment_id>")
@spec.validate(
    resp=SpecResponse(HTTP_200=Experiment, **problem_responses(404)), tags=["lab"],
    skip_validation=True,
)  # fmt: skip
def get_experiment(experiment_id: str) -> Response:
    """State and progress per target while it runs; then the report and its verdict."""
    return json_response(find_experiment(experiment_id))


@blueprint.get("/experiments/<experiment_id>/chart.<fmt>")
@spec.validate(resp=SpecResponse(**problem_responses(404, 409)), tags=["lab"], skip_validation=True)
def experiment_chart(experiment_id: str, fmt: str) -> Response:
    """The comparison drawn, as chart.svg or chart.png."""
    if fmt not in ("svg", "png"):
        raise Problem(404, "Not Found", "charts are chart.svg and chart.png")
    experiment = find_experiment(experiment_id)
    if experiment.report is None:
        raise Problem(409, "Not finished", f"experiment {experiment_id} is {experiment.state}")
    mimetype = "image/svg+xml" if fmt == "svg" else "image/png"
    return Response(render_comparison(experiment.report, fmt), mimetype=mimetype)
