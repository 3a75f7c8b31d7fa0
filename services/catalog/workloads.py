"""The workload catalog of this process: the built-ins, the modules of installed packages
(entry-point group `jobrunner.workloads`) and those named in JOBRUNNER_WORKLOADS, each
imported once, every `@workload` in them registered (services/catalog/registry.py).

The API and every worker load it the same way at start; each says its fingerprint (a
hash of every name, kind and parameter schema), so a worker started with another catalog
than the API's shows on /pools. A workload knows nothing of Celery or Flask, so every
pool and every local executor runs the very same code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from importlib.metadata import entry_points
from typing import Literal

from services.catalog.errors import WorkloadError
from services.catalog.registry import REGISTERED, RegistrationError, Workload
from services.core.settings import get_settings

__all__ = [
    "CATALOG",
    "FINGERPRINT",
    "RegistrationError",
    "Workload",
    "WorkloadError",
    "WorkloadName",
    "get_workload",
]

BUILTIN_MODULE = "services.catalog.builtin"
ENTRY_POINT_GROUP = "jobrunner.workloads"


def workload_modules() -> list[str]:
    """The modules to import, in order, each once: the built-ins, installed packages'
    entry points, then JOBRUNNER_WORKLOADS."""
    named = [BUILTIN_MODULE]
    named += [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    named += get_settings().jobrunner_workloads
    return list(dict.fromkeys(named))


def load_catalog(modules: list[str]) -> dict[str, Workload]:
    """Import `modules` and return every workload registered, by name;
    RegistrationError (one line) for a module that cannot be imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                raise RegistrationError(
                    f"the workload module {module!r} (JOBRUNNER_WORKLOADS, or an entry "
                    f"point) is not importable here: no module {exc.name!r}; install its "
                    "package, or add its folder to PYTHONPATH"
                ) from None
            raise RegistrationError(f"importing workloads from {module!r}: {exc}") from exc
        except RegistrationError:
            raise
        except Exception as exc:  # the user's module failed while importing
            raise RegistrationError(
                f"importing workloads from {module!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    return dict(REGISTERED)


def fingerprint(catalog: dict[str, Workload]) -> str:
    """Short hash of what a client can ask of the catalog: names, kinds, param schemas."""
    described = {
        name: [w.kind, w.params.model_json_schema()] for name, w in sorted(catalog.items())
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]


CATALOG: dict[str, Workload] = load_catalog(workload_modules())
FINGERPRINT = fingerprint(CATALOG)
_BY_REF = {w.ref: w for w in CATALOG.values()}

# The catalog's names as a type, so a model's 422 lists the allowed values by itself.
WorkloadName = Literal[tuple(CATALOG)]  # type: ignore[valid-type]


def get_workload(name: str) -> Workload:
    """The catalog entry named `name` (or `module:function`); KeyError when there is none."""
    entry = CATALOG.get(name) or _BY_REF.get(name)
    if entry is None:
        raise KeyError(name)
    return entry


def resolve_name(name: str) -> str:
    """The catalog name of `name` or of `module:function`; `name` itself when unknown."""
    entry = CATALOG.get(name) or _BY_REF.get(name)
    return entry.name if entry else name
