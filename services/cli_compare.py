"""`jobrunner compare`: one workload on pools and local executors, drawn and explained;
with --scale, swept over the number of worker processes per pool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli_app import ApiError, ApiOption, Client, app, console, params_of, run
from services.executors import LOCAL_EXECUTORS
from services.pools import POOLS
from services.redis_server import free_port
from services.scale_chart import render_scale

FINAL = {"succeeded", "failed"}


def resolve_local(client: Client, workload: str, local: str) -> list[str]:
    if local == "none":
        return []
    chosen = list(LOCAL_EXECUTORS) if local == "all" else [x for x in local.split(",") if x]
    if local == "all":
        kinds = {w["name"]: w["kind"] for w in client.json("GET", "/workloads")["workloads"]}
        if kinds.get(workload) == "cpu":
            chosen.remove("asyncio")  # not offered for CPU work; the API would say so
    return chosen


def run_with_progress(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    experiment = client.json("POST", "/experiments", json=body)
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bars = {
            name: progress.add_task(name, total=p["total"])
            for name, p in experiment["progress"].items()
        }
        while experiment["state"] not in FINAL:
            time.sleep(0.2)
            experiment = client.json("GET", f"/experiments/{experiment['id']}")
            for name, p in experiment["progress"].items():
                progress.update(bars[name], completed=p["done"])
    if experiment["state"] != "succeeded":
        raise ApiError(f"experiment {experiment['id']} failed: {experiment['error']}")
    return experiment


def mib(size: int | None) -> str:
    return f"{size / 2**20:.0f}" if size else "-"


def report_table(report: dict[str, Any]) -> Table:
    table = Table(
        "target", "kind", "conc.", "procs", "makespan s", "jobs/s", "latency p50/p95/p99 s",
        "queue p50 s", "run p50 s", "CPU/job ms", "peak RSS MB", "errors", "ideal s",
        "efficiency",
        title=f"{report['workload']} x{report['count']} {report['params']}",
    )  # fmt: skip
    for t in report["targets"]:
        lat = t["latency_s"]
        table.add_row(
            t["target"], t["kind"], str(t["concurrency"]), str(t.get("processes") or "-"),
            f"{t['makespan_s']:.3f}", f"{t['throughput_per_s']:.1f}",
            f"{lat['p50']:.3f}/{lat['p95']:.3f}/{lat['p99']:.3f}",
            f"{t['queue_wait_s']['p50']:.3f}", f"{t['run_time_s']['p50']:.3f}",
            f"{t['cpu_seconds_per_job'] * 1000:.1f}", mib(t.get("peak_rss_bytes")),
            str(t["errors"]), f"{t['ideal_makespan_s']:.3f}", f"{t['efficiency']:.0%}",
        )  # fmt: skip
    return table


def markdown(report: dict[str, Any]) -> str:
    topology = report["topology"]
    lines = [
        f"# {report['workload']} x{report['count']} ({report['params']})",
        "",
        f"{topology['cores']} cores, Python {topology['python']}, Celery {topology['celery']}, "
        f"Redis {topology['redis_server']}, local concurrency {report['concurrency']}.",
        "",
        "| target | kind | concurrency | processes | makespan s | jobs/s | latency p50 s "
        "| latency p95 s | latency p99 s | queue wait p50 s | run p50 s | CPU/job ms "
        "| peak RSS MB | errors | ideal s | efficiency |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: |",
    ]
    for t in report["targets"]:
        lat = t["latency_s"]
        lines.append(
            f"| {t['target']} | {t['kind']} | {t['concurrency']} | {t.get('processes') or '-'} "
            f"| {t['makespan_s']:.3f} | {t['throughput_per_s']:.1f} | {lat['p50']:.3f} "
            f"| {lat['p95']:.3f} | {lat['p99']:.3f} | {t['queue_wait_s']['p50']:.3f} "
            f"| {t['run_time_s']['p50']:.3f} | {t['cpu_seconds_per_job'] * 1000:.1f} "
            f"| {mib(t.get('peak_rss_bytes'))} | {t['errors']} "
            f"| {t['ideal_makespan_s']:.3f} | {t['efficiency']:.0%} |"
        )
    lines += ["", *(f"- {line}" for line in report["verdict"]), ""]
    return "\n".join(lines)


def write_outputs(client: Client, experiment: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(experiment, indent=2))
    (out / "report.md").write_text(markdown(experiment["report"]))
    for fmt in ("svg", "png"):
        chart = client.call("GET", f"/experiments/{experiment['id']}/chart.{fmt}")
        (out / f"chart.{fmt}").write_bytes(chart.content)
    console.print(f"wrote {out}/report.json, report.md, chart.svg, chart.png")


class LocalStack:
    """`make run` with N workers of each pool swept (none of the others, which would only
    compete for the cores), on a free port, in a folder of its own."""

    def __init__(self, workers: int, pools: list[str]) -> None:
        self.workers, self.pools = workers, pools
        self.folder = Path(tempfile.mkdtemp(prefix=f"jobrunner-scale{workers}-"))
        self.port = free_port()

    def __enter__(self) -> Client:
        # Its own Redis and its own key, whatever this shell points at.
        private = ("REDIS_URL", "JOBRUNNER_API_KEYS", "JOBRUNNER_AUTH")
        env = {k: v for k, v in os.environ.items() if k not in private}
        env.update(API_PORT=str(self.port), JOBRUNNER_RUN_DIR=str(self.folder / ".run"))
        scale = ",".join(f"{p}={self.workers if p in self.pools else 0}" for p in POOLS)
        self.log = (self.folder / "stack.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.localstack", "--scale", scale],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            return self.wait_ready(time.monotonic() + 120)
        except BaseException:
            self.__exit__()  # no stack left behind
            raise

    def wait_ready(self, deadline: float) -> Client:
        """Until the API answers and every worker of the swept pools is alive: the lab
        refuses an experiment on a pool that no live worker serves yet."""
        while "jobrunner is up" not in (self.folder / "stack.log").read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ApiError(f"the local stack did not start; see {self.folder / 'stack.log'}")
            time.sleep(0.2)
        key = (self.folder / ".run" / "api-key").read_text().strip()
        client = Client(f"http://127.0.0.1:{self.port}", key=key)
        while True:
            live = {p["name"]: len(p["workers"]) for p in client.json("GET", "/pools")["pools"]}
            if all(live.get(pool, 0) >= self.workers for pool in self.pools):
                return client
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ApiError(f"workers did not come up ({live}); see {self.folder}")
            time.sleep(0.3)

    def __exit__(self, *_: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self.log.close()


def sweep(body: dict[str, Any], scales: list[int], out: Path | None) -> None:
    """The same experiment at each number of workers per pool, each on a fresh stack."""
    throughput: dict[str, dict[int, float]] = {pool: {} for pool in body["pools"]}
    for workers in scales:
        console.print(f"[bold]{workers} worker process(es) per pool[/]")
        with LocalStack(workers, body["pools"]) as client:
            experiment = run_with_progress(client, {**body, "local": []})
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


@app.command()
def compare(
    workload: Annotated[str, typer.Argument(help="A workload from `jobrunner workloads`.")],
    param: Annotated[list[str], typer.Option("-p", "--param", help="key=value, repeatable.")] = [],  # noqa: B006
    count: Annotated[int, typer.Option(help="Jobs per target.")] = 100,
    pools: Annotated[
        str, typer.Option(help="Comma-separated pools, or 'none'.")
    ] = "threads,prefork,gevent",
    local: Annotated[
        str, typer.Option(help="'all', 'none', or e.g. sequential,threadpool.")
    ] = "all",
    concurrency: Annotated[int, typer.Option(help="max_workers of the local executors.")] = 8,
    out: Annotated[
        Path | None, typer.Option(help="Write report.json, report.md and the chart here.")
    ] = None,
    scale: Annotated[
        str | None, typer.Option(help="Sweep workers per pool, e.g. 1,2,4 (starts local stacks).")
    ] = None,
    api: ApiOption = None,
) -> None:
    """Run WORKLOAD on pools and local executors side by side; show who wins and why."""

    def go() -> None:
        client = Client(api)
        body = {
            "workload": workload, "params": params_of(param), "count": count,
            "pools": [] if pools == "none" else [p for p in pools.split(",") if p],
            "local": [], "concurrency": concurrency,
        }  # fmt: skip
        if scale:
            # The sweep runs the pools only, each time on a stack of its own: the user's
            # API is neither needed nor asked (GET /workloads would fail without one).
            try:
                scales = [int(n) for n in scale.split(",")]
            except ValueError:
                raise ApiError(f"--scale {scale!r}: want numbers like 1,2,4") from None
            sweep(body, scales, out)
            return
        body["local"] = resolve_local(client, workload, local)
        experiment = run_with_progress(client, body)
        console.print(report_table(experiment["report"]))
        for line in experiment["report"]["verdict"]:
            console.print(f"  - {line}")
        if out:
            write_outputs(client, experiment, out)

    run(go)
