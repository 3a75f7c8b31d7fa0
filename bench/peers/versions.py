"""Every peer's pinned versions, in one place: the library and everything it pulls in,
as `pip freeze` gave them on the day they were chosen (2026-12, the versions issue 13
measured). A change here makes a new virtual environment (venvs.py keys it by these)."""

from __future__ import annotations

# What each peer's environment is installed from, exactly. redis-py is whatever the
# library asks for: arq 0.28 still requires redis < 6 (with hiredis, its extra), the
# others take the current 8.1.
PINS: dict[str, tuple[str, ...]] = {
    "huey": ("huey==3.5.4", "redis==8.1.0"),
    "dramatiq": ("dramatiq==2.2.1", "redis==8.1.0"),
    "taskiq": (
        "taskiq==0.13.0", "taskiq-redis==1.2.4", "redis==8.1.0",
        "aiohappyeyeballs==2.7.1", "aiohttp==3.14.5", "aiosignal==1.4.0",
        "annotated-types==0.8.0", "anyio==4.16.0", "attrs==26.1.0", "frozenlist==1.8.0",
        "idna==3.20", "multidict==7.2.1", "propcache==0.5.4", "pycron==3.3.0",
        "pydantic==2.14.4", "pydantic_core==2.50.5", "taskiq-dependencies==1.5.7",
        "typing-inspection==0.4.5", "typing_extensions==4.16.0", "yarl==1.25.1",
    ),
    "arq": ("arq==0.28.0", "redis==5.3.1", "hiredis==3.5.0", "click==8.5.1", "PyJWT==2.15.1"),
    "rq": (
        "rq==3.0.0", "redis==8.1.0", "click==8.5.1", "croniter==7.0.0",
        "python-dateutil==4.0.0", "tzdata==2026.6",
    ),
}  # fmt: skip


def library_version(peer: str) -> str:
    """The peer library's own pinned version: `huey` -> `3.5.4`."""
    for pin in PINS[peer]:
        name, _, version = pin.partition("==")
        if name.lower() == peer:
            return version
    raise KeyError(f"no pin for {peer} itself in {PINS[peer]}")
