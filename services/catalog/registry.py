"""The one door into the catalog: `@workload` on a plain function.

A workload's parameters come from its signature and type hints (a pydantic model is built
from them, `extra="forbid"`), or from the one pydantic model it takes; its docstring is its
description. Decorating only records the function here: which modules are imported, and
so which workloads exist in a process, is decided by `services/catalog/workloads.py`.
The built-ins come through this same door, so nothing downstream special-cases them.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, create_model

from services.core.vocabulary import POOL_NAMES, WorkloadKind

F = TypeVar("F", bound=Callable[..., Any])


class RegistrationError(Exception):
    """A workload that cannot be registered as written; said at start, in one line."""


class ResultNotJson(Exception):
    """A workload returned something JSON cannot hold; the job fails, the worker goes on."""


@dataclass(frozen=True)
class Workload:
    name: str
    kind: WorkloadKind
    params: type[BaseModel]
    function: Callable[..., Any]
    description: str
    # Failures worth another attempt (the network blinked), as opposed to bad input.
    retryable: tuple[type[BaseException], ...] = ()
    default_pool: str | None = None  # None: the pool suited to the kind
    time_limit: int | None = None  # seconds, when the job does not say
    max_retries: int = 0  # when the job does not say
    # Checks only configuration can make (an allow-list), run at submission and in the worker.
    policy: Callable[[BaseModel], None] | None = None
    takes_model: bool = False  # called with the parsed model, not with its fields
    ref: str = field(default="")  # "module:qualname", another name the lab accepts

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

    def validate(self, params: dict[str, Any]) -> BaseModel:
        """Parse params into the workload's model (pydantic.ValidationError) and check
        the operator's policy on them (WorkloadError)."""
        parsed = self.params.model_validate(params)
        self.check_policy(parsed)
        return parsed

    def check_policy(self, parsed: BaseModel) -> None:
        if self.policy is not None:
            self.policy(parsed)

    def call(self, params: dict[str, Any]) -> Any:
        """The function's return for already validated, JSON-shaped params: a value for
        a sync function, a coroutine for an async one."""
        parsed = self.params.model_validate(params)
        self.check_policy(parsed)
        if self.takes_model:
            return self.function(parsed)
        # The parsed values, typed as the signature says (a datetime stays a datetime).
        return self.function(**{name: getattr(parsed, name) for name in type(parsed).model_fields})

    def run(self, params: dict[str, Any]) -> Any:
        """Run to the end in this thread; an async workload on this thread's own loop."""
        outcome = self.call(params)
        if self.is_async:
            outcome = thread_loop().run(outcome)
        return outcome


def json_result(value: Any) -> Any:
    """`value` if JSON can hold it (what a job record stores), else ResultNotJson."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ResultNotJson(
            f"the workload returned {type(value).__name__}, which is not JSON: {exc}"
        ) from None
    return value


_loops = threading.local()


def thread_loop() -> asyncio.Runner:
    """One event loop per thread (per process on prefork), kept between jobs so that a
    workload's loop-bound clients (an httpx.AsyncClient in a module global) keep working."""
    runner = getattr(_loops, "runner", None)
    if runner is None:
        runner = _loops.runner = asyncio.Runner()
    return runner


def params_model(function: Callable[..., Any], name: str) -> tuple[type[BaseModel], bool]:
    """The pydantic model of `function`'s parameters, and whether it takes that model
    itself (its one parameter is annotated with a BaseModel)."""
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except NameError as exc:  # a string annotation naming what the module does not hold
        raise RegistrationError(
            f"workload {name!r}: its type hints cannot be resolved ({exc}); annotate with "
            "types the module defines or imports at its top level"
        ) from None
    parameters = list(inspect.signature(function).parameters.values())
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise RegistrationError(
                f"workload {name!r}: *{parameter.name} cannot be described as JSON "
                "parameters; name each parameter"
            )
    if len(parameters) == 1:
        hint = hints.get(parameters[0].name)
        if inspect.isclass(hint) and issubclass(hint, BaseModel):
            return hint, True
    fields: dict[str, Any] = {
        p.name: (
            hints.get(p.name, Any),
            ... if p.default is inspect.Parameter.empty else p.default,
        )
        for p in parameters
    }
    title = "".join(part.title() for part in name.split("_")) + "Params"
    model = create_model(title, __config__=ConfigDict(extra="forbid"), **fields)
    return model, False


# Every workload decorated in this process so far, by name; the catalog reads it once the
# modules it names are imported.
REGISTERED: dict[str, Workload] = {}


def workload(
    function: F | None = None,
    *,
    name: str | None = None,
    kind: WorkloadKind = "io",
    default_pool: str | None = None,
    time_limit: int | None = None,
    max_retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (),
    description: str | None = None,
    policy: Callable[[BaseModel], None] | None = None,
) -> Any:
    """Register `function` as a workload, named after it unless `name` says otherwise.

    `kind` ("io" or "cpu") picks the default pool (gevent, prefork) unless `default_pool`
    names one; `time_limit`, `max_retries` and `retry_on` are the defaults of its jobs.
    Usable bare (`@workload`) or called (`@workload(kind="cpu")`); returns the function
    unchanged, so it stays an ordinary function to call and test.
    """

    def register(fn: F) -> F:
        workload_name = name or fn.__name__
        if kind not in ("io", "cpu"):
            raise RegistrationError(f"workload {workload_name!r}: kind must be 'io' or 'cpu'")
        if default_pool is not None and default_pool not in POOL_NAMES:
            raise RegistrationError(
                f"workload {workload_name!r}: default_pool must be one of {', '.join(POOL_NAMES)}"
            )
        model, takes_model = params_model(fn, workload_name)
        entry = Workload(
            name=workload_name,
            kind=kind,
            params=model,
            function=fn,
            description=description or inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0],
            retryable=tuple(retry_on),
            default_pool=default_pool,
            time_limit=time_limit,
            max_retries=max_retries,
            policy=policy,
            takes_model=takes_model,
            ref=f"{fn.__module__}:{fn.__qualname__}",
        )
        already = REGISTERED.get(workload_name)
        if already is not None and already.ref != entry.ref:
            raise RegistrationError(
                f"two workloads are named {workload_name!r}: {already.ref} and {entry.ref}; "
                "rename one, or pass name= to @workload"
            )
        REGISTERED[workload_name] = entry
        return fn

    if function is None:
        return register
    if not callable(function):  # @workload("cpu"): the options are keywords
        raise RegistrationError(
            f"@workload got {function!r}; pass its options by name, e.g. @workload(kind='cpu')"
        )
    return register(function)


def catalog_or_exit() -> None:
    """Load this process's catalog at its start; a problem ends it in one line, not in a
    traceback (services/catalog/workloads.py loads it on import)."""
    try:
        importlib.import_module("services.catalog.workloads")
    except RegistrationError as exc:
        # One line even when the user's exception spoke in several.
        sys.exit("jobrunner: " + " ".join(str(exc).split()))
