"""`@workload` turns a plain function into a catalog entry: its params model from the
signature, its description, its defaults; and the catalog's fingerprint changes with any
schema. Discovery (JOBRUNNER_WORKLOADS, entry points) is checked in a fresh interpreter,
since the catalog is loaded once per process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.catalog.pools import default_pool_for, pool_cannot_run
from services.catalog.registry import (
    REGISTERED,
    RegistrationError,
    ResultNotJson,
    json_result,
    workload,
)
from services.catalog.workloads import check_defaults, fingerprint, workload_fingerprints
from services.devstack.compose import PROJECT_ROOT


@pytest.fixture(autouse=True)
def registry() -> Iterator[dict]:
    """What each test registers is forgotten after it: names stay free for the next."""
    saved = dict(REGISTERED)
    yield REGISTERED
    REGISTERED.clear()
    REGISTERED.update(saved)


def test_params_model_from_the_signature() -> None:
    @workload
    def resize(
        path: str,
        width: Annotated[int, Field(ge=1, le=4000)] = 800,
        sharpen: bool = False,
    ) -> dict:
        return {"path": path, "width": width, "sharpen": sharpen}

    model = REGISTERED["resize"].params
    assert model.model_validate({"path": "a.png"}).model_dump() == {
        "path": "a.png",
        "width": 800,
        "sharpen": False,
    }
    schema = model.model_json_schema()
    assert schema["required"] == ["path"]
    assert schema["properties"]["width"]["maximum"] == 4000
    for bad in ({}, {"path": "a", "width": 0}, {"path": "a", "width": 4001}, {"path": 3}):
        with pytest.raises(ValidationError):
            model.model_validate(bad)
    with pytest.raises(ValidationError, match="extra"):
        model.model_validate({"path": "a", "height": 10})


def test_call_passes_the_parsed_values() -> None:
    @workload
    def add(a: int, b: int = 2) -> int:
        return a + b

    # "3" is coerced as the signature says (not strict), and the default filled in.
    assert REGISTERED["add"].run({"a": "3"}) == 5
    # The decorated function is returned unchanged: still an ordinary function.
    assert add(1, 1) == 2


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str
    quantity: int = Field(1, ge=1)


def test_a_function_taking_one_pydantic_model_gets_that_model() -> None:
    @workload
    def place(order: Order) -> str:
        return f"{order.quantity} x {order.item}"

    entry = REGISTERED["place"]
    assert entry.params is Order
    assert entry.takes_model
    assert entry.run({"item": "tea", "quantity": 2}) == "2 x tea"
    with pytest.raises(ValidationError):
        entry.run({"item": "tea", "quantity": 0})


def test_docstring_first_paragraph_is_the_description() -> None:
    @workload
    def documented() -> None:
        """Does one thing.

        At length, here.
        """

    @workload(description="Said otherwise.")
    def overridden() -> None:
        """Not this."""

    @workload
    def bare() -> None:
        pass

    assert REGISTERED["documented"].description == "Does one thing."
    assert REGISTERED["overridden"].description == "Said otherwise."
    assert REGISTERED["bare"].description == ""


def test_decorator_bare_and_called() -> None:
    @workload
    def plain() -> int:
        return 1

    @workload(name="renamed", kind="cpu", default_pool="prefork", time_limit=5, max_retries=2,
              retry_on=(ConnectionError,))  # fmt: skip
    def called() -> int:
        return 2

    assert plain() == 1 and called() == 2
    assert REGISTERED["plain"].kind == "io"
    entry = REGISTERED["renamed"]
    assert "called" not in REGISTERED
    assert (entry.kind, entry.default_pool, entry.time_limit, entry.max_retries) == (
        "cpu",
        "prefork",
        5,
        2,
    )
    assert entry.retryable == (ConnectionError,)
    assert entry.ref == f"{__name__}:test_decorator_bare_and_called.<locals>.called"


def test_options_not_by_name_are_refused() -> None:
    with pytest.raises(RegistrationError, match="by name"):
        workload("cpu")


@pytest.mark.parametrize(
    "options", [{"kind": "gpu"}, {"default_pool": "fibers"}], ids=["kind", "pool"]
)
def test_bad_options_are_refused(options: dict) -> None:
    with pytest.raises(RegistrationError, match=next(iter(options))):

        @workload(**options)
        def job() -> None:
            pass


def test_async_is_detected_and_run_on_a_loop() -> None:
    @workload
    async def wait(seconds: float = 0.0) -> str:
        await asyncio.sleep(seconds)
        return "waited"

    @workload
    def blocking() -> str:
        return "done"

    entry = REGISTERED["wait"]
    assert entry.is_async and not REGISTERED["blocking"].is_async
    assert entry.run({"seconds": 0}) == "waited"
    assert entry.run({}) == "waited"  # the thread's loop is kept between runs
    # Not on gevent (one OS thread, one loop at a time); threads by default.
    assert pool_cannot_run(entry, "gevent") is not None
    assert pool_cannot_run(entry, "threads") is None
    assert pool_cannot_run(entry, "prefork") is None
    assert pool_cannot_run(REGISTERED["blocking"], "gevent") is None
    assert default_pool_for(entry) == "threads"


def test_defaults_that_contradict_each_other_are_refused_at_load() -> None:
    @workload(default_pool="gevent")
    async def on_greenlets() -> None:
        pass

    @workload(default_pool="threads", time_limit=5)
    def unkillable() -> None:
        pass

    @workload(time_limit=5)
    def limited() -> None:
        pass

    with pytest.raises(RegistrationError, match="gevent"):
        check_defaults(REGISTERED["on_greenlets"])
    with pytest.raises(RegistrationError, match="cannot enforce its time_limit"):
        check_defaults(REGISTERED["unkillable"])
    # With no default pool, a time limit picks one that can enforce it.
    check_defaults(REGISTERED["limited"])
    assert default_pool_for(REGISTERED["limited"]) == "prefork"


def test_unresolvable_type_hints_are_refused_in_one_line() -> None:
    class Local(BaseModel):
        x: int

    # With `from __future__ import annotations` (this module has it) a hint is a string,
    # resolved in the module's globals, where a class local to a function is not.
    with pytest.raises(RegistrationError, match="'Local' is not defined"):

        @workload
        def uses(value: Local) -> None:
            pass


def test_json_result() -> None:
    value = {"a": [1, 2.5, "x", None, True]}
    assert json_result(value) is value
    for bad in ({1, 2}, b"bytes", float("nan"), object()):
        with pytest.raises(ResultNotJson, match="not JSON"):
            json_result(bad)


def test_two_workloads_of_one_name_are_refused() -> None:
    @workload
    def twin() -> int:
        return 1

    def make_another() -> None:
        @workload(name="twin")
        def other() -> int:
            return 2

    with pytest.raises(RegistrationError, match="two workloads are named 'twin'"):
        make_another()


@pytest.mark.parametrize("star", ["*args", "**kwargs"])
def test_star_parameters_are_refused(star: str) -> None:
    namespace: dict = {}
    exec(f"def variadic(a: int, {star}): pass", namespace)
    with pytest.raises(RegistrationError, match=star.lstrip("*")):
        workload(namespace["variadic"])


def test_fingerprint_changes_with_any_schema() -> None:
    @workload(name="shape")
    def first(width: int = 1) -> None:
        pass

    before = dict(REGISTERED)
    REGISTERED.pop("shape")

    @workload(name="shape")
    def second(width: Annotated[int, Field(le=10)] = 1) -> None:
        pass

    after = dict(REGISTERED)
    assert fingerprint(before) != fingerprint(after)
    assert fingerprint(before) == fingerprint(dict(before))  # and only then
    ours, theirs = workload_fingerprints(before), workload_fingerprints(after)
    assert [n for n in ours if ours[n] != theirs[n]] == ["shape"]


# -- discovery, in a fresh interpreter ---------------------------------------------------

SHOW_CATALOG = (
    "import json; from services.catalog import workloads as w; "
    "print(json.dumps({n: e.ref for n, e in w.CATALOG.items()}))"
)


def load_in_subprocess(extra_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    python_path = os.pathsep.join([str(extra_path), str(PROJECT_ROOT)])
    return subprocess.run(
        [sys.executable, "-c", SHOW_CATALOG],
        env={**os.environ, "PYTHONPATH": python_path, **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_installed_entry_point_joins_the_catalog(tmp_path: Path) -> None:
    # What pip leaves in site-packages for a package declaring, in its pyproject.toml,
    #   [project.entry-points."jobrunner.workloads"]
    #   shop = "shop_jobs"
    (tmp_path / "shop_jobs.py").write_text(
        textwrap.dedent(
            """
            from jobrunner import workload

            @workload
            def restock(item: str) -> str:
                return item
            """
        )
    )
    dist = tmp_path / "shop_jobs-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shop-jobs\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[jobrunner.workloads]\nshop = shop_jobs\n")

    found = load_in_subprocess(tmp_path, {"JOBRUNNER_WORKLOADS": ""})
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["restock"] == "shop_jobs:restock"

    # Without the dist-info the module is only a file on the path: not in the catalog.
    (dist / "entry_points.txt").unlink()
    (dist / "METADATA").unlink()
    dist.rmdir()
    unlisted = load_in_subprocess(tmp_path, {"JOBRUNNER_WORKLOADS": ""})
    assert "restock" not in json.loads(unlisted.stdout)


def test_jobrunner_workloads_names_modules(tmp_path: Path) -> None:
    (tmp_path / "more_jobs.py").write_text(
        "from jobrunner import workload\n\n@workload\ndef extra_one() -> int:\n    return 1\n"
    )
    found = load_in_subprocess(tmp_path, {"JOBRUNNER_WORKLOADS": " more_jobs , "})
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["extra_one"] == "more_jobs:extra_one"
