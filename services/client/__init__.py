"""The jobrunner HTTP API from Python, as `from jobrunner import Client` offers it.

HTTP only (requests): it imports nothing of the server, so it runs wherever the API can
be reached (an import-linter contract in pyproject.toml holds it to that).

    client = Client("http://127.0.0.1:8000", api_key="...")
    job = client.submit("sleep", seconds=0.1)
    job.result(timeout=30)
"""

from services.client.client import Client
from services.client.errors import (
    ApiError,
    ApiUnreachable,
    BatchRejected,
    ExperimentFailed,
    JobFailed,
)
from services.client.jobs import Job

__all__ = [
    "ApiError", "ApiUnreachable", "BatchRejected", "Client", "ExperimentFailed", "Job",
    "JobFailed",
]  # fmt: skip
