"""`jobrunner`: the command-line client of the HTTP API.

It finds the API at --api, else JOBRUNNER_URL, else http://127.0.0.1:8000, and its key in
JOBRUNNER_API_KEY, else in the key file `make run` writes (.run/api-key).
"""

from services import cli_compare  # noqa: F401  (registers `compare` on the app)
from services.cli_app import app, parse_param

__all__ = ["app", "main", "parse_param"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
