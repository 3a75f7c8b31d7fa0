"""The mutation gate's catalog (tests/mutations/catalog.py) still fits the code: each
edit's text is in its file exactly once, each test it names exists, and the Guarantees
page names every mutation. A refactoring that moves a mutated line fails here, in
`make test`, rather than leaving a mutation that tests nothing."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.mutations.catalog import MUTATIONS

ROOT = Path(__file__).resolve().parents[2]


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_mutation_ids_are_unique() -> None:
    ids = [m.id for m in MUTATIONS]
    assert len(ids) == len(set(ids))


def test_every_edit_finds_its_text_once() -> None:
    stale = []
    for mutation in MUTATIONS:
        for edit in mutation.edits:
            found = (ROOT / edit.path).read_text().count(edit.old)
            if found != 1 or edit.old == edit.new:
                stale.append(f"{mutation.id}: {edit.path} has its text {found} times")
    assert not stale, stale


def test_every_named_test_exists() -> None:
    missing = []
    for mutation in MUTATIONS:
        assert mutation.tests, mutation.id
        for node in mutation.tests:
            path, _, name = node.partition("::")
            if name.split("[")[0] not in defined_tests(ROOT / path):
                missing.append(f"{mutation.id}: {node}")
    assert not missing, missing


def test_the_fast_subset_needs_no_stack_of_its_own() -> None:
    """CI runs each fast mutation's first test alone: none of the fault or cluster tests,
    which start stacks of their own."""
    fast = [m for m in MUTATIONS if m.fast]
    assert fast
    for mutation in fast:
        assert not mutation.tests[0].startswith(("tests/faults/", "tests/cluster/")), mutation.id


def test_the_guarantees_page_names_every_mutation() -> None:
    page = (ROOT / "docs" / "guarantees.md").read_text()
    assert not [m.id for m in MUTATIONS if f"`{m.id}`" not in page]
