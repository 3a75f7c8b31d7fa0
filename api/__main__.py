"""`python -m api`: serve the API under gunicorn on API_HOST:API_PORT.

The compose file and the local runner both start the API with this command.
"""

from __future__ import annotations

import os
import sys

from services.catalog.registry import catalog_or_exit
from services.core.settings import get_settings, load_settings


def gunicorn_command() -> list[str]:
    settings = get_settings()
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{settings.api_host}:{settings.api_port}",
        "--workers",
        str(settings.api_workers),
        # Threads, because /lab/delay and slow clients wait on I/O; they must not block
        # the whole worker.
        "--worker-class",
        "gthread",
        "--threads",
        "32",
        "--access-logfile",
        "-",
        "--config",
        "python:api.gunicorn_conf",
        "api.app:create_app()",
    ]


def main() -> None:
    # A bad variable stops it here in one line per problem, not in a traceback.
    load_settings()
    # Likewise a workload module that cannot be imported, or two workloads of one name.
    catalog_or_exit()
    argv = gunicorn_command()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
