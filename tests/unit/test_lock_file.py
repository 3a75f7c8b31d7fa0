"""requirements.lock: a fresh machine installs the versions the tests ran with.

`make install` installs under the lock's constraints (`pip install -c requirements.lock`),
and `make lock` writes it with pip-compile. These tests hold the lock to pyproject.toml
(every dependency pinned, each pin inside its range) and to the environment the suite
runs in (what is installed is what is locked).
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier  # exactly one: ==
        assert specifier.operator == "==", line
        pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(line) for line in project["dependencies"] + extras["dev"] + extras["bench"]]


def test_every_declared_dependency_is_pinned_inside_its_range() -> None:
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]} outside {requirement.specifier}: "
            "run make lock"
        )


def test_what_is_installed_is_what_is_locked() -> None:
    """The environment the suite runs in (make install's) holds the locked versions of
    everything the project declares, so the versions CI tested are the lock's."""
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            continue  # an extra this environment was not installed with (bench)
        assert installed == pins[name], (
            f"{name} {installed} is installed, requirements.lock says {pins[name]}: "
            "run make install (or make lock after changing pyproject.toml)"
        )
