"""`jobrunner compare`: one workload on pools and local executors, drawn and explained;
with --scale, swept over the number of worker processes per pool (services/cli/scale.py).
`jobrunner compare-runs`: finished experiments side by side, each with where it ran (a
local run and a cluster run of the same workload, say)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.app import ApiOption, app, console, params_of, run
from services.cli.client import ApiError, Client
from services.cli.scale import sweep
from services.core.formatting import format_mib
from services.core.vocabulary import FINAL_EXPERIMENT_STATES


def resolve_local(client: Client, workload: str, local: str) -> list[str]:
    """The local executors to compare: 'all' is every one the API offers for the workload
    (GET /workloads says which: asyncio runs no CPU-bound work), 'none' none."""
    if local == "none":
        return []
    if local != "all":
        return [x for x in local.split(",") if x]
    for entry in client.json("GET", "/workloads")["workloads"]:
        if entry["name"] == workload:
            return list(entry["local_executors"])
    return []  # an unknown workload: the API's 422 names the allowed ones


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
        while experiment["state"] not in FINAL_EXPERIMENT_STATES:
            time.sleep(0.2)
            experiment = client.json("GET", f"/experiments/{experiment['id']}")
            for name, p in experiment["progress"].items():
                progress.update(bars[name], completed=p["done"])
    if experiment["state"] != "succeeded":
        raise ApiError(f"experiment {experiment['id']} failed: {experiment['error']}")
    return experiment


def where(topology: dict[str, Any]) -> str:
    """Where a report's run happened (the API says it in `where`; a report stored before
    it did has its core count only)."""
    return topology.get("where") or f"{topology['cores']} cores"


def cpu_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def report_table(report: dict[str, Any]) -> Table:
    table = Table(
        "target", "kind", "conc.", "procs", "makespan s", "jobs/s", "latency p50/p95/p99 s",
        "queue p50 s", "run p50 s", "CPU/job ms", "peak RSS MB", "errors", "ideal s",
        "efficiency",
        title=f"{report['workload']} x{report['count']} {report['params']}",
        caption=f"on {where(report['topology'])}",
    )  # fmt: skip
    for t in report["targets"]:
        lat = t["latency_s"]
        table.add_row(
            t["target"], t["kind"], str(t["concurrency"]), str(t.get("processes") or "-"),
            f"{t['makespan_s']:.3f}", f"{t['throughput_per_s']:.1f}",
            f"{lat['p50']:.3f}/{lat['p95']:.3f}/{lat['p99']:.3f}",
            f"{t['queue_wait_s']['p50']:.3f}", f"{t['run_time_s']['p50']:.3f}",
            cpu_ms(t["cpu_seconds_per_job"]), format_mib(t.get("peak_rss_bytes")),
            str(t["errors"]), f"{t['ideal_makespan_s']:.3f}", f"{t['efficiency']:.0%}",
        )  # fmt: skip
    return table


def markdown(report: dict[str, Any]) -> str:
    topology = report["topology"]
    lines = [
        f"# {report['workload']} x{report['count']} ({report['params']})",
        "",
        f"On {where(topology)}, Python {topology['python']}, Celery {topology['celery']}, "
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
            f"| {t['run_time_s']['p50']:.3f} | {cpu_ms(t['cpu_seconds_per_job'])} "
            f"| {format_mib(t.get('peak_rss_bytes'))} | {t['errors']} "
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
            sweep(body, scales, out, run_with_progress, console)
            return
        body["local"] = resolve_local(client, workload, local)
        experiment = run_with_progress(client, body)
        console.print(report_table(experiment["report"]))
        for line in experiment["report"]["verdict"]:
            console.print(f"  - {line}")
        if out:
            write_outputs(client, experiment, out)

    run(go)


def runs_table(comparison: dict[str, Any]) -> Table:
    """One row per run: which is which, and where it ran."""
    table = Table("run", "id", "workload", "jobs", "where it ran", title="runs")
    for number, entry in enumerate(comparison["runs"], start=1):
        params = ", ".join(f"{k}={v}" for k, v in entry["params"].items())
        table.add_row(
            str(number), entry["id"], f"{entry['workload']}({params})", str(entry["count"]),
            entry["where"],
        )  # fmt: skip
    return table


def comparison_table(comparison: dict[str, Any]) -> Table:
    """Each target's figures in each run, the runs numbered as in runs_table."""
    ids = [entry["id"] for entry in comparison["runs"]]
    columns = [f"run {n}: {figure}" for n in range(1, len(ids) + 1) for figure in FIGURES]
    table = Table("target", *columns, "jobs/s last/first", title="side by side")
    for row in comparison["rows"]:
        cells = []
        for experiment_id in ids:
            throughput = row["throughput_per_s"].get(experiment_id)
            p50 = row.get("latency_p50_s", {}).get(experiment_id)
            efficiency = row.get("efficiency", {}).get(experiment_id)
            cells += [
                "-" if throughput is None else f"{throughput:.1f}",
                "-" if p50 is None else f"{p50:.3f}",
                format_mib(row.get("peak_rss_bytes", {}).get(experiment_id)),
                "-" if efficiency is None else f"{efficiency:.0%}",
            ]
        ratio = row["ratio_last_to_first"]
        table.add_row(row["target"], *cells, "-" if ratio is None else f"{ratio:.2f}x")
    return table


FIGURES = ("jobs/s", "p50 s", "peak RSS MB", "efficiency")


@app.command("compare-runs")
def compare_runs(
    ids: Annotated[list[str], typer.Argument(help="Two or more finished experiment ids.")],
    api: ApiOption = None,
) -> None:
    """Finished experiments side by side, each with where it ran (GET /experiments/compare):
    a local run and a cluster run of the same workload, or 1 and 4 workers per pool."""

    def go() -> None:
        comparison = Client(api).json("GET", "/experiments/compare", params={"ids": ",".join(ids)})
        console.print(runs_table(comparison))
        console.print(comparison_table(comparison))

    run(go)
