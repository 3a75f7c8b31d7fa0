"""The HTTP API from the command line: where it is, which key to send, and its problems
said in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from services.core.settings import get_settings


class ApiError(Exception):
    """Said to the user in one line; the command exits non-zero."""


def api_key() -> str | None:
    """JOBRUNNER_API_KEY, else the key `make run` wrote into its run folder."""
    settings = get_settings()
    if settings.jobrunner_api_key and settings.jobrunner_api_key.get_secret_value():
        return settings.jobrunner_api_key.get_secret_value()
    key_file = (settings.jobrunner_run_dir or Path(".run")) / "api-key"
    return key_file.read_text().strip() if key_file.exists() else None


class Client:
    """The API at `api` (else JOBRUNNER_URL), sending `key` (else api_key())."""

    def __init__(self, api: str | None, key: str | None = None) -> None:
        self.base = (api or get_settings().jobrunner_url).rstrip("/")
        self.session = requests.Session()
        if key := key or api_key():
            self.session.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, self.base + path, timeout=30, **kwargs)
        except requests.ConnectionError:
            raise ApiError(
                f"no jobrunner API at {self.base} - start one with `make run`, or point "
                "--api / JOBRUNNER_URL at yours"
            ) from None
        if response.status_code >= 400:
            raise ApiError(describe_problem(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()


def describe_problem(response: requests.Response) -> str:
    """One line from a problem+json answer: title, detail, the failing fields."""
    try:
        problem = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    line = f"{problem.get('title', 'Error')} ({response.status_code}): {problem.get('detail', '')}"
    if response.status_code == 401:
        line += (
            " - set JOBRUNNER_API_KEY, or run from the folder where `make run` wrote .run/api-key"
        )
    return line
