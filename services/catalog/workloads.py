"""The workload catalog of this process: the built-ins, the modules of installed packages
(entry-point group `jobrunner.workloads`) and those named in JOBRUNNER_WORKLOADS, each
imported once, every `@workload` in them registered (services/catalog/registry.py).

The API and every worker load it the same way at start; each says its fingerprint (a
hash of every name, kind, async-ness and parameter schema), so a worker started with
another catalog than the API's shows on /pools, with the names that differ. A workload
knows nothing of Celery or Flask, so every pool and every local executor runs the very
same code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Literal

from services.catalog.errors import WorkloadError
from services.catalog.pools import POOLS, pool_cannot_run
from services.catalog.registry import REGISTERED, RegistrationError, Workload
from services.core.settings import get_settings

__all__ = [
    "CATALOG",
    "FINGERPRINT",
    "WORKLOAD_FINGERPRINTS",
    "CatalogDifference",
    "RegistrationError",
    "Workload",
    "WorkloadError",
    "WorkloadName",
    "catalog_difference",
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
    RegistrationError (one line) for a module that cannot be imported, or a workload
    whose own defaults contradict each other."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # The module itself (or a package on its path) is missing, not something it
            # imports: "mypkg.jobs" when `mypkg` or `mypkg.jobs` is not found.
            if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
                raise RegistrationError(
                    f"the workload module {module!r} (JOBRUNNER_WORKLOADS, or an entry "
                    f"point) is not importable here: no module {exc.name!r}; install its "
                    "package, or add its folder to PYTHONPATH"
                ) from None
            raise RegistrationError(f"importing workloads from {module!r}: {exc}") from exc
        except RegistrationError as exc:  # a workload in it cannot be registered
            raise RegistrationError(f"importing workloads from {module!r}: {exc}") from None
        except Exception as exc:  # the user's module failed while importing
            raise RegistrationError(
                f"importing workloads from {module!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    for entry in REGISTERED.values():
        check_defaults(entry)
    return dict(REGISTERED)


def check_defaults(entry: Workload) -> None:
    """A workload whose default pool cannot run it, or cannot enforce its default time
    limit, would have every job that leaves the pool out refused: said at start instead."""
    if entry.default_pool is None:
        return
    why = pool_cannot_run(entry, entry.default_pool)
    if why is not None:
        raise RegistrationError(
            f"workload {entry.name!r} ({entry.ref}): default_pool={entry.default_pool!r}: {why}"
        )
    if entry.time_limit is not None and not POOLS[entry.default_pool].hard_time_limit:
        able = ", ".join(p.name for p in POOLS.values() if p.hard_time_limit)
        raise RegistrationError(
            f"workload {entry.name!r} ({entry.ref}): default_pool={entry.default_pool!r} "
            "cannot enforce its time_limit (a thread or greenlet cannot be killed); pools "
            f"that can: {able}"
        )


def described(entry: Workload) -> list[Any]:
    """What a client can ask of a workload, and what decides where it may run."""
    return [entry.kind, entry.is_async, entry.params.model_json_schema()]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def fingerprint(catalog: dict[str, Workload]) -> str:
    """Short hash of the whole catalog: every name, kind, async-ness and params schema.
    Equal in two processes exactly when a job accepted by one runs as such in the other."""
    return _digest({name: described(w) for name, w in sorted(catalog.items())})


def workload_fingerprints(catalog: dict[str, Workload]) -> dict[str, str]:
    """The same hash per workload: what a worker reports, so that where two catalogs
    differ can be named, not only that they do."""
    return {name: _digest(described(w)) for name, w in sorted(catalog.items())}


@dataclass(frozen=True)
class CatalogDifference:
    """How another process's catalog differs from this one's, by workload name."""

    missing: list[str]  # here, not there: its jobs fail there as workload_not_on_worker
    extra: list[str]  # there, not here: no job accepted here can ask for them
    changed: list[str]  # in both, with another kind, async-ness or params schema


def catalog_difference(theirs: dict[str, str]) -> CatalogDifference:
    """How `theirs` (workload_fingerprints of another process) differs from CATALOG."""
    ours = WORKLOAD_FINGERPRINTS
    return CatalogDifference(
        missing=sorted(set(ours) - set(theirs)),
        extra=sorted(set(theirs) - set(ours)),
        changed=sorted(n for n in set(ours) & set(theirs) if ours[n] != theirs[n]),
    )


CATALOG: dict[str, Workload] = load_catalog(workload_modules())
FINGERPRINT = fingerprint(CATALOG)
WORKLOAD_FINGERPRINTS = workload_fingerprints(CATALOG)
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
