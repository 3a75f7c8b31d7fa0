"""jobrunner for Python code: `workload` registers a function as a workload, `Client`
submits jobs and runs comparisons over the HTTP API.

    from jobrunner import workload

    @workload(kind="cpu")
    def resize(path: str, width: int = 800) -> dict:
        ...

The implementation lives in `services/`; this package is the stable surface users import.
"""

from services.catalog.registry import RegistrationError, workload

__all__ = ["RegistrationError", "workload"]
