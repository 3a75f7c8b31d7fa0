"""`jobrunner compare --scale`: the same experiment with 1, 2, 4 … worker processes per
pool, each on a fresh local stack started by the launcher, drawn as throughput against
workers (where more workers stop paying)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from services.cli.client import ApiError, Client
from services.core.api_keys import hash_key, new_key
from services.core.plotting import figure_bytes, plt
from services.core.settings import get_settings
from services.devstack.launcher import Launcher, LaunchError
from services.devstack.probes import pool_workers_probe
from services.devstack.redis_server import free_port
from services.devstack.scratch import scratch_folder

RunExperiment = Callable[[Client, dict[str, Any]], dict[str, Any]]

# Variables of the user's shell that would point a sweep's stack at something else.
PRIVATE = ("REDIS_URL", "JOBRUNNER_API_KEYS", "JOBRUNNER_AUTH", "API_HOST", "API_PORT")


@contextmanager
def scale_stack(workers: int, pools: list[str]) -> Iterator[Client]:
    """A stack with `workers` processes of each swept pool (none of the others, which would
    only compete for the cores), its own Redis, key and port, in a folder of its own that
    goes once the run worked; a client of it while the block runs."""
    with scratch_folder(f"jobrunner-scale{workers}-") as folder:
        key = new_key()
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE}
        launcher = Launcher(
            folder, overrides={"JOBRUNNER_API_KEYS": f"sweep:read+submit+admin:{hash_key(key)}"},
            base_env=env,
        )  # fmt: skip
        try:
            launcher.start_redis()
            launcher.start_api(host="127.0.0.1", port=free_port())
            launcher.start(launcher.worker_process("experiments"))
            for pool in pools:
                for _ in range(workers):
                    launcher.start_worker(pool)
            launcher.wait_api_ready(120)
            # The lab refuses an experiment on a pool that no live worker serves yet.
            probe = pool_workers_probe(launcher.api_url, key)
            launcher.wait_workers_ready(probe, timeout=120, pools=set(pools))
        except LaunchError as exc:
            launcher.stop()
            raise ApiError(f"the local stack did not start: {exc}") from None
        try:
            yield Client(launcher.api_url, key=key)
        finally:
            # As make run stops: the workers' own grace first, so nothing is killed mid-job.
            launcher.stop(get_settings().job_shutdown_grace + 10)


def sweep(
    body: dict[str, Any],
    scales: list[int],
    out: Path | None,
    run_experiment: RunExperiment,
    console: Console,
) -> None:
    """The same experiment at each number of workers per pool, each on a fresh stack."""
    throughput: dict[str, dict[int, float]] = {pool: {} for pool in body["pools"]}
    for workers in scales:
        console.print(f"[bold]{workers} worker process(es) per pool[/]")
        with scale_stack(workers, body["pools"]) as client:
            experiment = run_experiment(client, {**body, "local": []})
        for target in experiment["report"]["targets"]:
            throughput[target["target"]][workers] = target["throughput_per_s"]
    title = f"{body['workload']} x{body['count']}: jobs/s by workers per pool"
    columns = ["pool", *(f"{n} worker(s)" for n in scales), "gain, last vs first"]
    table = Table(*columns, title=title)
    for pool, by_scale in throughput.items():
        gain = by_scale[scales[-1]] / by_scale[scales[0]] if by_scale.get(scales[0]) else 0
        table.add_row(pool, *(f"{by_scale[n]:.1f}" for n in scales), f"{gain:.2f}x")
    console.print(table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(throughput, indent=2))
        for fmt in ("svg", "png"):
            (out / f"scale.{fmt}").write_bytes(render_scale(body, throughput, fmt))
        console.print(f"wrote {out}/scale.json, scale.svg, scale.png")


def render_scale(body: dict[str, Any], throughput: dict[str, dict[int, float]], fmt: str) -> bytes:
    """A scale sweep drawn: jobs/s per pool against worker processes per pool."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for pool, by_scale in throughput.items():
        scales = sorted(by_scale)
        axes.plot(scales, [by_scale[n] for n in scales], marker="o", label=pool)
    axes.set_xlabel("worker processes per pool")
    axes.set_ylabel("throughput (jobs/s)")
    axes.set_xticks(sorted({n for by in throughput.values() for n in by}))
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    params = ", ".join(f"{k}={v}" for k, v in body["params"].items())
    axes.set_title(f"{body['workload']}({params}) x{body['count']}: where more workers stop paying")
    return figure_bytes(figure, fmt)
