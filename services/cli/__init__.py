"""`jobrunner`, the command-line client: it speaks HTTP to the API through the Python
client (services/client/, `from jobrunner import Client`) and imports no server code (an
import-linter contract in pyproject.toml holds it to that).

It finds the API at --api, else JOBRUNNER_URL, else http://127.0.0.1:8000, and its key in
JOBRUNNER_API_KEY, else in the key file `make run` writes (.run/api-key).
"""

from __future__ import annotations


def main() -> None:
    """The `jobrunner` command: every subcommand registered on the one typer app."""
    from services.cli import compare  # noqa: F401  (registers `compare` on the app)
    from services.cli.app import app

    app()
