"""/workloads: the catalog, each workload with its kind and the JSON schema of its params."""

from flask import Blueprint, Response
from spectree import Response as SpecResponse

from api.models import WorkloadInfo, WorkloadList
from api.openapi import spec
from api.responses import json_response
from services.catalog.pools import POOLS, default_pool_for, pool_cannot_run
from services.catalog.workloads import CATALOG, FINGERPRINT
from services.lab.executors import offered_executors

blueprint = Blueprint("catalog", __name__)


@blueprint.get("/workloads")
@spec.validate(resp=SpecResponse(HTTP_200=WorkloadList), tags=["catalog"], skip_validation=True)
def list_workloads() -> Response:
    """The workloads a job can run."""
    body = WorkloadList(
        workloads=[
            WorkloadInfo(
                name=w.name,
                kind=w.kind,
                description=w.description,
                default_pool=default_pool_for(w),
                is_async=w.is_async,
                ref=w.ref,
                pools=[pool for pool in POOLS if pool_cannot_run(w, pool) is None],
                params_schema=w.params.model_json_schema(),
                local_executors=offered_executors(w.name),
            )
            for w in CATALOG.values()
        ],
        fingerprint=FINGERPRINT,
    )
    return json_response(body)
