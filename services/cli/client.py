"""The CLI's view of the Python client (services/client/): the same `Client`, plus the two
calls the commands make for endpoints it does not wrap, `call` (the response) and
`json` (its body), and its errors said in one line."""

from __future__ import annotations

from typing import Any

import requests

from services.client import ApiError
from services.client import Client as ApiClient
from services.client.defaults import api_key

__all__ = ["ApiError", "Client", "api_key", "describe_problem"]


class Client(ApiClient):
    """The API at `api` (else JOBRUNNER_URL), sending `key` (else JOBRUNNER_API_KEY, else
    .run/api-key). ApiError, said to the user in one line, for any error answer."""

    def __init__(self, api: str | None, key: str | None = None) -> None:
        super().__init__(api, key)

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request(method, path, **kwargs)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()


def describe_problem(response: requests.Response) -> str:
    """One line from a problem+json answer: title, status, detail (naming the failing
    fields)."""
    return str(ApiError.from_response(response))
