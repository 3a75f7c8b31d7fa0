"""`jobrunner compare`: one workload on pools and local executors, drawn and explained;
with --scale, swept over the number of worker processes per pool (services/cli/scale.py);
with --sweep, over the values of one of the workload's parameters (services/cli/sweep.py).
`jobrunner compare-runs`: finished experiments side by side, each with where it ran (a
local run and a cluster run of the same workload, say)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import JustifyMethod
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.app import ApiOption, app, console, params_of, run, usage_error, where
from services.cli.client import ApiError, Client
from services.cli.scale import sweep
from services.cli.sweep import check_sweep, param_sweep, parse_sweep
from services.core.formatting import format_mib
from services.core.vocabulary import FINAL_EXPERIMENT_STATES

# The pools `compare` runs when --pools is not given, less those that cannot run the
# workload (default_pools).
DEFAULT_POOLS = ("threads", "prefork", "gevent")


def catalog_entry(client: Client, workload: str) -> dict[str, Any] | None:
    """The workload's entry in GET /workloads, by name or by its `module:function` ref;
    None when the catalog has neither (the API resolves the ref, or its 422 says why)."""
    for entry in client.json("GET", "/workloads")["workloads"]:
        if workload in (entry["name"], entry.get("ref")):
            return entry
    return None


def resolve_local(entry: dict[str, Any] | None, local: str) -> list[str]:
    """The local executors to compare: 'all' is every one the API offers for the workload
    in GET /workloads `local_executors` (the lab's choice, not the CLI's: today all four,
    asyncio running an async workload natively and a plain one in threads); 'none' none;
    else those named. 'all' of a workload the catalog does not list is none: the API's
    422 names the workload."""
    if local == "none":
        return []
    if local != "all":
        return [x for x in local.split(",") if x]
    return list(entry["local_executors"]) if entry else []


def named_pools(option: str | None) -> list[str] | None:
    """The pools --pools names ('none': none); None when it is not given."""
    if option is None:
        return None
    return [] if option == "none" else [p for p in option.split(",") if p]


def default_pools(entry: dict[str, Any] | None) -> tuple[list[str], str | None]:
    """The pools to compare when --pools is not given, and a line saying which were left
    out and why (None when none were). Those of DEFAULT_POOLS that can run the workload:
    as GET /workloads lists them in `pools`, else (a server that does not list them) all
    but gevent for an async workload, which the API refuses on gevent with a 422. A
    workload the catalog does not list gets them all (the API's 422 names it)."""
    if entry is None:
        return list(DEFAULT_POOLS), None
    if "pools" in entry:
        able = [p for p in DEFAULT_POOLS if p in entry["pools"]]
    else:
        able = [p for p in DEFAULT_POOLS if not (entry.get("is_async") and p == "gevent")]
    left_out = [p for p in DEFAULT_POOLS if p not in able]
    if not left_out:
        return able, None
    if entry.get("is_async") and left_out == ["gevent"]:
        why = (
            f"{entry['name']} is async, and gevent's greenlets share one thread, so one event loop"
        )
    else:
        why = f"GET /workloads says they cannot run {entry['name']}"
    skipped = ", ".join(left_out)
    return able, f"pools: {', '.join(able) or 'none'} ({skipped} left out: {why})"


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


def cpu_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


@dataclass(frozen=True)
class Column:
    """A column of the comparison table: its header (a line break where it may wrap, so a
    narrow terminal gets two short lines rather than a cut word), its cell for a target,
    and whether it is one of the figures a user decides by (shown without --wide)."""

    header: str
    cell: Callable[[dict[str, Any]], str]
    decides: bool = False
    justify: JustifyMethod = "right"


def _latency(quantile: str) -> Callable[[dict[str, Any]], str]:
    return lambda t: f"{t['latency_s'][quantile]:.3f}"


# In the order of the wide table; the default keeps the same order with the `decides` ones.
# Those seven fit 80 columns with the longest target name (processpool); the rest is one
# --wide away, and always in report.md (markdown() below).
REPORT_COLUMNS = (
    Column("target", lambda t: t["target"], decides=True, justify="left"),
    Column("kind", lambda t: t["kind"], justify="left"),
    Column("concurrency", lambda t: str(t["concurrency"])),
    Column("processes", lambda t: str(t.get("processes") or "-")),
    Column("jobs/s", lambda t: f"{t['throughput_per_s']:.1f}", decides=True),
    Column("makespan\ns", lambda t: f"{t['makespan_s']:.3f}", decides=True),
    Column("ideal\ns", lambda t: f"{t['ideal_makespan_s']:.3f}", decides=True),
    Column("efficiency", lambda t: f"{t['efficiency']:.0%}", decides=True),
    Column("latency\np50 s", _latency("p50"), decides=True),
    Column("latency\np95 s", _latency("p95")),
    Column("latency\np99 s", _latency("p99")),
    Column("queue wait\np50 s", lambda t: f"{t['queue_wait_s']['p50']:.3f}"),
    Column("run time\np50 s", lambda t: f"{t['run_time_s']['p50']:.3f}"),
    Column("CPU/job\nms", lambda t: cpu_ms(t["cpu_seconds_per_job"])),
    Column("peak RSS\nMB", lambda t: format_mib(t.get("peak_rss_bytes")), decides=True),
    Column("errors", lambda t: str(t["errors"])),
)


def report_table(report: dict[str, Any], wide: bool = False) -> Table:
    """The report's figures per target: by default those a user decides by, which fit an
    80-column terminal; with `wide`, every column (about 175 columns)."""
    columns = [c for c in REPORT_COLUMNS if wide or c.decides]
    caption = f"on {where(report['topology'])}"
    if not wide:
        hidden = len(REPORT_COLUMNS) - len(columns)
        caption += f"\n{hidden} more columns with --wide, and in report.md (--out)"
    table = Table(
        title=f"{report['workload']} x{report['count']} {report['params']}", caption=caption
    )
    for column in columns:
        table.add_column(column.header, justify=column.justify)
    for t in report["targets"]:
        table.add_row(*(column.cell(t) for column in columns))
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
        str | None,
        typer.Option(
            help="Comma-separated pools, or 'none'. Left out: threads,prefork,gevent, less "
            "those the workload cannot run (gevent for an async one), said in one line.",
            show_default=False,
        ),
    ] = None,
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
    sweep_over: Annotated[
        str | None,
        typer.Option(
            "--sweep",
            help="NAME=v1,v2,...: one experiment per value of a parameter, e.g. "
            "cpu_ms=0,5,20,50; a table and chart of jobs/s against it (--out: sweep.json, "
            "sweep.svg, sweep.png).",
        ),
    ] = None,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help="Every column (about 175 wide): kind, concurrency, processes, latency p95 "
            "and p99, queue wait, run time, CPU per job and errors too.",
        ),
    ] = False,
    api: ApiOption = None,
) -> None:
    """Run WORKLOAD on pools and local executors side by side; show who wins and why.
    WORKLOAD may be a catalog name or a `module:function` ref."""
    spec = parse_sweep(sweep_over) if sweep_over else None
    if spec and scale:
        usage_error("--sweep and --scale: one sweep at a time")

    def go() -> None:
        client = Client(api)
        named = named_pools(pools)
        body = {
            "workload": workload, "params": params_of(param), "count": count,
            "pools": list(DEFAULT_POOLS) if named is None else named, "local": [],
            "concurrency": concurrency,
        }  # fmt: skip
        if scale:
            # The sweep runs the pools only, each time on a stack of its own: the user's
            # API is neither needed nor asked (GET /workloads would fail without one), so
            # the default pools are all three; each stack's API refuses one that cannot
            # run the workload.
            try:
                scales = [int(n) for n in scale.split(",")]
            except ValueError:
                raise ApiError(f"--scale {scale!r}: want numbers like 1,2,4") from None
            sweep(body, scales, out, run_with_progress, console)
            return
        # GET /workloads once, and only when the command line leaves something to it.
        asks = spec or named is None or local == "all"
        entry = catalog_entry(client, workload) if asks else None
        if spec:
            check_sweep(spec, body["params"], entry)
        if named is None:
            body["pools"], left_out = default_pools(entry)
            if left_out:
                console.print(left_out, soft_wrap=True)
        body["local"] = resolve_local(entry, local)
        if spec:
            param_sweep(client, body, spec, out, run_with_progress)
            return
        experiment = run_with_progress(client, body)
        console.print(report_table(experiment["report"], wide))
        for line in experiment["report"]["verdict"]:
            console.print(f"  - {line}")
        if out:
            write_outputs(client, experiment, out)

    run(go)


def runs_table(comparison: dict[str, Any]) -> Table:
    """One row per run: which is which, and where it ran. The id (36 characters, which
    cannot wrap) shares its cell with what ran, so that the row fits 80 columns with room
    for `where`, which wraps between words."""
    table = Table("run", "experiment", "where it ran", title="runs")
    for number, entry in enumerate(comparison["runs"], start=1):
        params = ", ".join(f"{k}={v}" for k, v in entry["params"].items())
        what = f"{entry['id']}\n{entry['workload']}({params}) x{entry['count']}"
        table.add_row(str(number), what, entry["where"])
    # The ids are kept whole; a long parameter (a URL) or host name is folded, not cut.
    table.columns[1].width = max((len(entry["id"]) for entry in comparison["runs"]), default=0)
    table.columns[1].overflow = table.columns[2].overflow = "fold"
    return table


def comparison_table(comparison: dict[str, Any]) -> Table:
    """Each target's figures in each run, one row a run (numbered as in runs_table), so
    that any number of runs fits 80 columns; the ratio on the target's last row."""
    ids = [entry["id"] for entry in comparison["runs"]]
    table = Table(
        "target", "run", "jobs/s", "latency\np50 s", "peak RSS\nMB", "efficiency",
        "jobs/s\nlast/first", title="side by side",
    )  # fmt: skip
    for column in table.columns[1:]:
        column.justify = "right"
    for row in comparison["rows"]:
        ratio = row["ratio_last_to_first"]
        for number, experiment_id in enumerate(ids, start=1):
            throughput = row["throughput_per_s"].get(experiment_id)
            p50 = row.get("latency_p50_s", {}).get(experiment_id)
            efficiency = row.get("efficiency", {}).get(experiment_id)
            last = number == len(ids)
            table.add_row(
                row["target"] if number == 1 else "",
                str(number),
                "-" if throughput is None else f"{throughput:.1f}",
                "-" if p50 is None else f"{p50:.3f}",
                format_mib(row.get("peak_rss_bytes", {}).get(experiment_id)),
                "-" if efficiency is None else f"{efficiency:.0%}",
                ("-" if ratio is None else f"{ratio:.2f}x") if last else "",
                end_section=last,
            )
    return table


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
