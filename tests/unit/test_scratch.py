"""A private stack's folder goes once its run worked, and stays, named, when it failed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from services.devstack.scratch import scratch_folder


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_run_that_worked_leaves_no_folder(temp_root: Path) -> None:
    with scratch_folder("jobrunner-x-") as folder:
        (folder / "redis.log").write_text("ready")
        assert folder.parent == temp_root
    assert not folder.exists()


def test_a_run_that_failed_keeps_its_folder_and_names_it(
    temp_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RuntimeError, match="worker died"), scratch_folder("jobrunner-x-") as folder:
        (folder / "worker.log").write_text("Traceback ...")
        raise RuntimeError("worker died")
    assert (folder / "worker.log").read_text() == "Traceback ..."
    assert str(folder) in capsys.readouterr().err
