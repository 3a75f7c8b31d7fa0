"""jobrunner for Python code: `workload` registers a function as a workload, `Client`
submits jobs and runs comparisons over the HTTP API.

    from jobrunner import workload

    @workload(kind="cpu")
    def resize(path: str, width: int = 800) -> dict:
        ...

    from jobrunner import Client, JobFailed

A workload's `policy` (checks only configuration can make, run at submission) raises
`WorkloadError(message, field="url")` for a 422 on that field.

    client = Client()  # JOBRUNNER_URL and JOBRUNNER_API_KEY, else .run/api-key
    print(client.submit("resize", path="cat.png").result(timeout=60))

The implementation lives in `services/` (the client in services/client/, docs/client.md);
this package is the stable surface users import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.catalog.errors import WorkloadError
from services.catalog.registry import RegistrationError, workload

if TYPE_CHECKING:
    from services.client import (
        ApiError,
        ApiUnreachable,
        BatchRejected,
        Client,
        ExperimentFailed,
        Job,
        JobFailed,
    )

__all__ = [
    "ApiError", "ApiUnreachable", "BatchRejected", "Client", "ExperimentFailed", "Job",
    "JobFailed", "RegistrationError", "WorkloadError", "workload",
]  # fmt: skip

# The client's names are imported on first use: a module of workloads, which every worker
# imports, then never loads requests for a client it does not use.
_CLIENT_NAMES = frozenset(__all__) - {"RegistrationError", "WorkloadError", "workload"}


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        import services.client

        return getattr(services.client, name)
    raise AttributeError(f"module 'jobrunner' has no attribute {name!r}")
