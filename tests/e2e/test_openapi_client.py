"""A client generated from /openapi.json gets plain class names, and works.

spectree names schemas `<Model>.<hash>` and nested ones `<Model>.<hash>.<Nested>`; a
generator turns those into class names (or, for datamodel-code-generator, into one
package per model, with a JobRecord in each). `api/openapi.py` gives each schema its
model's plain name; these tests hold that, and generate models from the live document
the way docs/api.md tells a user to.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from api.openapi import SchemaNameClash, with_plain_schema_names
from tests.stack import Stack

# What spectree appends to a schema's name: seven hex digits of its module's hash.
SPECTREE_HASH = re.compile(r"[0-9a-f]{7}")


def generator() -> Path:
    """The venv's datamodel-codegen (the dev extra installs it)."""
    found = Path(sys.executable).with_name("datamodel-codegen")
    if not found.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must generate a client: install the dev extra")
        pytest.skip("datamodel-code-generator is not installed (make install installs it)")
    return found


def generated_models(document: dict, folder: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The models datamodel-code-generator writes for `document`, imported."""
    source = folder / "openapi.json"
    source.write_text(json.dumps(document))
    target = folder / "jobrunner_models.py"
    result = subprocess.run(
        [str(generator()), "--input", str(source), "--input-file-type", "openapi",
         "--output-model-type", "pydantic_v2.BaseModel", "--target-python-version", "3.11",
         "--formatters", "builtin", "--disable-timestamp", "--output", str(target)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and target.is_file(), result.stderr[-3000:]
    module_spec = importlib.util.spec_from_file_location("jobrunner_models", target)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    # pydantic resolves the module's annotations through sys.modules.
    monkeypatch.setitem(sys.modules, "jobrunner_models", module)
    module_spec.loader.exec_module(module)
    return module


def test_a_client_generated_from_the_document_has_plain_names_and_works(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = stack.http.get(f"{stack.url}/openapi.json", timeout=10)
    assert response.status_code == 200, response.text
    document = response.json()
    names = list(document["components"]["schemas"])
    hashed = [n for n in names if not n.isidentifier() or SPECTREE_HASH.search(n)]
    assert not hashed, f"schema names a generator would turn into odd classes: {hashed}"

    models = generated_models(document, tmp_path, monkeypatch)
    for name in ("JobSubmission", "JobRecord", "BatchAccepted", "ProblemBody", "PoolList"):
        assert isinstance(getattr(models, name, None), type), f"no class {name}"

    # One real call, both ways through the generated models: the body is built by one,
    # the answers are read by another.
    submission = models.JobSubmission(
        models.NoopJob(workload="noop", params=models.NoopParams(value="from a client"))
    )
    accepted = stack.http.post(
        f"{stack.url}/jobs",
        data=submission.model_dump_json(exclude_unset=True),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert accepted.status_code == 202, accepted.text
    job = models.JobRecord.model_validate_json(accepted.text)
    stack.wait_for([job.id])
    answer = stack.http.get(f"{stack.url}/jobs/{job.id}", timeout=10)
    record = models.JobRecord.model_validate_json(answer.text)
    assert (record.id, record.state, record.result) == (
        job.id,
        models.JobState.succeeded,
        "from a client",
    )


def test_spectree_serves_the_same_plain_document(stack: Stack) -> None:
    """/apidoc/openapi.json (spectree's own path, read by its pages) is no second,
    hash-named document."""
    ours = stack.http.get(f"{stack.url}/openapi.json", timeout=10).json()
    spectrees = stack.http.get(f"{stack.url}/apidoc/openapi.json", timeout=10)
    assert spectrees.status_code == 200, spectrees.text
    assert spectrees.json() == ours


def schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def test_copies_of_one_model_become_one_plain_schema() -> None:
    """spectree's copies of a nested model (one per model holding it) are one schema under
    the model's name, and every reference follows."""
    record = {"type": "object", "properties": {"id": {"type": "string"}}}
    hashed = {
        "paths": {"/jobs": {"get": {"responses": {"200": {"content": {
            "application/json": {"schema": schema_ref("JobPage.4a32f72")}}}}}}},
        "components": {"schemas": {
            "JobPage.4a32f72": {"properties": {"jobs": {
                "type": "array", "items": schema_ref("JobPage.4a32f72.JobRecord")}}},
            "JobPage.4a32f72.JobRecord": record,
            "BatchAccepted.4a32f72": {"properties": {"jobs": {
                "type": "array", "items": schema_ref("BatchAccepted.4a32f72.JobRecord")}}},
            "BatchAccepted.4a32f72.JobRecord": record,
            "JobRecord.ff9854b": record,
        }},
    }  # fmt: skip
    plain = with_plain_schema_names(hashed)
    assert list(plain["components"]["schemas"]) == ["BatchAccepted", "JobPage", "JobRecord"]
    schemas = plain["components"]["schemas"]
    assert schemas["JobPage"]["properties"]["jobs"]["items"] == schema_ref("JobRecord")
    assert schemas["BatchAccepted"]["properties"]["jobs"]["items"] == schema_ref("JobRecord")
    ok = plain["paths"]["/jobs"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == schema_ref("JobPage")
    assert "JobPage.4a32f72" in hashed["components"]["schemas"], "the input is left alone"


def test_two_different_models_of_one_name_are_refused() -> None:
    """Two models named alike (in two modules, say) would otherwise be one schema
    standing for both: the document is refused, naming both."""
    clashing = {
        "components": {
            "schemas": {
                "JobPage.4a32f72.JobError": {"properties": {"type": {"type": "string"}}},
                "Experiment.fbea8b0.JobError": {"properties": {"code": {"type": "integer"}}},
            }
        }
    }
    with pytest.raises(SchemaNameClash, match=r"JobPage\.4a32f72\.JobError.*JobError"):
        with_plain_schema_names(clashing)
