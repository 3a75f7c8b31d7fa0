"""Every file, test and module the code, the docs and the README name exists.

Files move; a comment or a page that still points at the old place sends a reader to
nothing. These checks read the text the way a reader follows it.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("api", "worker", "services", "tests", "bench")
# Written by a run, never committed (see .gitignore).
GENERATED = {"bench/latest-run.md", "bench/latest-run.png", "bench/out/peers.png"}

# A path from the project's root, optionally with `::name` of a function or class in it.
PATH_REFERENCE = re.compile(
    r"\b((?:api|worker|services|tests|bench|docs|deploy|examples)/[\w./-]*\w"
    r"\.(?:py|lua|md|yml|yaml|json|svg|png|toml))(?:::(\w+))?"
)
# A test named alone: anywhere in the docs; in code, in backticks (a name in code may be
# any identifier).
TEST_NAME_IN_DOCS = re.compile(r"\b(test_\w+)")
TEST_NAME_IN_CODE = re.compile(r"`(test_\w+)")
# `python -m some.module`
MODULE_COMMAND = re.compile(r"python3? -m ((?:api|worker|services|bench)(?:\.\w+)*)")


def texts() -> dict[Path, str]:
    """The code of every source folder, the docs, the README and the build files."""
    files = [p for folder in SOURCE_DIRS for p in (ROOT / folder).rglob("*.py")]
    files.remove(Path(__file__).resolve())  # its patterns are not references
    files += [p for p in (ROOT / "services").rglob("*.lua")]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += [ROOT / name for name in ("README.md", "docker-compose.yml", "Makefile")]
    files += [ROOT / "pyproject.toml", ROOT / "Dockerfile", ROOT / ".ci" / "run"]
    return {path: path.read_text() for path in files if path.is_file()}


def defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }


def test_every_named_file_exists() -> None:
    missing = []
    for path, text in texts().items():
        for reference, name in PATH_REFERENCE.findall(text):
            target = ROOT / reference
            if reference in GENERATED:
                continue
            if not target.exists():
                missing.append(f"{path.relative_to(ROOT)} names {reference}")
            elif name and name not in defined_names(target):
                missing.append(f"{path.relative_to(ROOT)} names {reference}::{name}")
    assert not missing, "\n".join(missing)


def test_every_named_test_exists() -> None:
    tests = {name for path in (ROOT / "tests").rglob("test_*.py") for name in defined_names(path)}
    missing = []
    for path, text in texts().items():
        pattern = TEST_NAME_IN_CODE if path.suffix == ".py" else TEST_NAME_IN_DOCS
        for name in pattern.findall(text):
            # A module's name (test_auth) is a file; a function's a test.
            is_file = any((ROOT / "tests").rglob(f"{name}.py"))
            if name not in tests and not is_file:
                missing.append(f"{path.relative_to(ROOT)} names {name}")
    assert not missing, "\n".join(missing)


def test_every_module_run_with_python_m_exists() -> None:
    missing = []
    for path, text in texts().items():
        for module in MODULE_COMMAND.findall(text):
            spec = importlib.util.find_spec(module)
            runnable = spec is not None and (
                spec.submodule_search_locations is None
                or importlib.util.find_spec(f"{module}.__main__") is not None
            )
            if not runnable:
                missing.append(f"{path.relative_to(ROOT)} runs python -m {module}")
    assert not missing, "\n".join(missing)
