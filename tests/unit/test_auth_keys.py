"""API keys: `python -m services.core.api_keys` prints what the README tells a compose user to
paste, and the API accepts it; a presented key is compared with every configured hash."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import pytest

from api import auth
from api.auth import parse_keys
from services.core.api_keys import hash_key
from services.core.settings import Settings


def test_prints_a_key_and_an_env_line_the_api_accepts() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "services.core.api_keys", "me", "read+submit+admin"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    key = printed[0].rsplit(" ", 1)[1]
    (env_line,) = [line for line in printed if line.startswith("JOBRUNNER_API_KEYS=")]
    # The .env line, read as compose hands it to a container.
    settings = Settings(jobrunner_api_keys=env_line.split("=", 1)[1])
    (parsed,) = parse_keys(settings.jobrunner_api_keys)
    assert parsed.name == "me" and parsed.scopes == {"read", "submit", "admin"}
    assert parsed.sha256.hex() == hash_key(key)
    assert key not in env_line  # only its hash goes to the API


def test_a_key_is_compared_with_every_configured_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the time a check takes does not tell which key matched, or how
    many came before it."""
    configured = parse_keys(
        [f"k{i}:read:{hashlib.sha256(f'secret-{i}'.encode()).hexdigest()}" for i in range(5)]
    )
    compared: list[bytes] = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append(b) or real(a, b))
    assert auth.identify(configured, "Bearer secret-0").name == "k0"
    assert len(compared) == 5
    compared.clear()
    assert auth.identify(configured, "Bearer wrong") is None
    assert len(compared) == 5
