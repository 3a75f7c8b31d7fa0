"""`python -m services.auth_keys`: what it prints is what the README tells a compose user
to paste, and the API accepts it."""

from __future__ import annotations

import subprocess
import sys

from api.auth import parse_keys
from services.auth_keys import hash_key
from services.settings import Settings


def test_prints_a_key_and_an_env_line_the_api_accepts() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "services.auth_keys", "me", "read+submit+admin"],
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
