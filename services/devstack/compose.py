"""The command of every jobrunner process, read from docker-compose.yml.

Compose and the local launcher start the very same commands, so the two ways to run
jobrunner cannot drift apart.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"


def compose_commands(path: Path = COMPOSE_FILE) -> dict[str, list[str]]:
    """Each app service's command (every service built from this project, so not Redis,
    Prometheus or Grafana), as argv for this Python."""
    services = yaml.safe_load(path.read_text())["services"]
    commands = {}
    for name, service in services.items():
        if "build" not in service:
            continue
        argv = shlex.split(service["command"])
        if argv[0] == "python":
            argv[0] = sys.executable
        commands[name] = argv
    return commands
