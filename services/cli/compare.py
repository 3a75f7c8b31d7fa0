"""`jobrunner compare`: one workload on pools and local executors, drawn and explained;
with --scale, swept over the number of worker processes per pool (services/cli/scale.py);
with --sweep, over the values of one of the workload's parameters.
`jobrunner compare-runs`: finished experiments side by side, each with where it ran (a
local run and a cluster run of the same workload, say)."""

from __future__ import annotations

import json
import operator
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import JustifyMethod
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.app import ApiOption, app, console, err, params_of, parse_param, run
from services.cli.client import ApiError, Client
from services.cli.scale import sweep
from services.core.formatting import format_mib
from services.core.plotting import figure_bytes, plt, spread_axis, swept_axis, value_label
from services.core.vocabulary import FINAL_EXPERIMENT_STATES


def catalog_entry(client: Client, workload: str) -> dict[str, Any] | None:
    """The workload's entry in GET /workloads, by name or by its `module:function` ref;
    None when the catalog has neither (the API resolves the ref, or its 422 says why)."""
    for entry in client.json("GET", "/workloads")["workloads"]:
        if workload in (entry["name"], entry.get("ref")):
            return entry
    return None


def resolve_local(client: Client, workload: str, local: str) -> list[str]:
    """The local executors to compare: 'all' is every one the API offers for the workload
    (GET /workloads says which: asyncio runs no CPU-bound work), 'none' none."""
    if local == "none":
        return []
    if local != "all":
        return [x for x in local.split(",") if x]
    entry = catalog_entry(client, workload)
    return list(entry["local_executors"]) if entry else []


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


# --- --sweep NAME=v1,v2,...: one experiment per value of one parameter ----------------


def usage_error(message: str) -> NoReturn:
    """A wrong command line, in one line (never wrapped), exit code 2 as click's own."""
    err.print(f"[red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


@dataclass(frozen=True)
class SweepSpec:
    """The swept parameter and its values; numbers in rising order, since the table, the
    chart and the crossover note read them from left to right."""

    name: str
    values: list[Any]

    def label(self, value: Any) -> str:
        return f"{self.name}={value_label(value)}"


def parse_sweep(text: str) -> SweepSpec:
    """`NAME=v1,v2,...`, each value read as a --param value (JSON if it parses: 5, 0.5,
    true; else a string); at least two, none twice. A wrong spec ends the command."""
    name, sep, listed = text.partition("=")
    name = name.strip()
    if not sep or not name:
        usage_error(f"--sweep {text!r}: want NAME=v1,v2,... such as cpu_ms=0,5,20")
    items = [item.strip() for item in listed.split(",")]
    if "" in items:
        usage_error(f"--sweep {text!r}: an empty value; want NAME=v1,v2,... such as cpu_ms=0,5,20")
    values = [parse_param(f"{name}={item}")[1] for item in items]
    if len(values) < 2:
        usage_error(f"--sweep {text!r}: a sweep needs two values or more")
    if len({json.dumps(v) for v in values}) != len(values):
        usage_error(f"--sweep {text!r}: a value is given twice")
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        values.sort()
    return SweepSpec(name, values)


BOUNDS = (
    ("minimum", operator.ge, ">="), ("maximum", operator.le, "<="),
    ("exclusiveMinimum", operator.gt, ">"), ("exclusiveMaximum", operator.lt, "<"),
)  # fmt: skip


def refused(value: Any, schema: dict[str, Any]) -> str | None:
    """Why the API would refuse `value`, as far as the parameter's JSON schema says it
    plainly (a number's type and bounds, a choice); None when it would not, or cannot tell.
    The API still validates each experiment: this only spares a sweep stopping half-way."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    kind = schema.get("type")
    if kind in ("number", "integer") and not number:
        return "not a number"
    if kind == "integer" and number and value != int(value):
        return "not a whole number"
    for key, holds, symbol in BOUNDS:
        if number and key in schema and not holds(value, schema[key]):
            return f"must be {symbol} {value_label(schema[key])}"
    if "enum" in schema and value not in schema["enum"]:
        return "must be one of " + ", ".join(value_label(v) for v in schema["enum"])
    return None


def check_sweep(spec: SweepSpec, fixed: dict[str, Any], entry: dict[str, Any] | None) -> None:
    """Before anything runs: the swept parameter is not also fixed, the workload has it,
    and each value fits its schema (a workload the catalog does not list: the API judges)."""
    if spec.name in fixed:
        usage_error(f"--sweep {spec.name} is also given as --param {spec.name}: give it once")
    if entry is None:
        return
    properties = entry["params_schema"].get("properties", {})
    if spec.name not in properties:
        known = ", ".join(properties) or "none"
        usage_error(f"--sweep {spec.name}: {entry['name']} has no such parameter (it has: {known})")
    for value in spec.values:
        if reason := refused(value, properties[spec.name]):
            usage_error(f"--sweep {spec.label(value)}: {reason}")


def best_of(throughput: dict[str, float]) -> tuple[str, float | None]:
    """The fastest target, and how much faster than the next (None with one target)."""
    ranked = sorted(throughput, key=throughput.__getitem__, reverse=True)
    first = ranked[0]
    if len(ranked) < 2 or not throughput[ranked[1]]:
        return first, None
    return first, throughput[first] / throughput[ranked[1]] - 1


def crossover(spec: SweepSpec, best: list[str]) -> str:
    """Which target is fastest where along the sweep: 'best: gevent up to cpu_ms=5,
    threads from cpu_ms=20'."""
    spans: list[list[Any]] = []  # [target, first value, last value]
    for value, target in zip(spec.values, best, strict=True):
        if spans and spans[-1][0] == target:
            spans[-1][2] = value
        else:
            spans.append([target, value, value])
    if len(spans) == 1:
        return f"best: {spans[0][0]} at every {spec.name} swept"
    parts = []
    for number, (target, first, last) in enumerate(spans):
        if first == last:
            parts.append(f"{target} at {spec.label(first)}")
        elif number == 0:
            parts.append(f"{target} up to {spec.label(last)}")
        elif number == len(spans) - 1:
            parts.append(f"{target} from {spec.label(first)}")
        else:
            parts.append(f"{target} from {spec.label(first)} to {value_label(last)}")
    note = "best: " + ", ".join(parts)
    if len({target for target, _, _ in spans}) < len(spans):
        # A target that leads, falls behind and leads again is more often noise (another
        # load on the machine, too few jobs) than a real effect of the parameter.
        note += " (back and forth: maybe noise; run again, or raise --count)"
    return note


def sweep_figures(
    spec: SweepSpec, body: dict[str, Any], experiments: list[dict[str, Any]]
) -> dict[str, Any]:
    """What a sweep measured, as sweep.json keeps it: enough to draw it again, and each
    experiment's id for `jobrunner compare-runs`."""
    reports = [e["report"] for e in experiments]
    runs = []
    for value, experiment, report in zip(spec.values, experiments, reports, strict=True):
        targets = report["targets"]
        throughput = {t["target"]: t["throughput_per_s"] for t in targets}
        best, margin = best_of(throughput)
        runs.append({
            "value": value,
            "experiment": experiment["id"],
            "throughput_per_s": throughput,
            "latency_p50_s": {t["target"]: t["latency_s"]["p50"] for t in targets},
            "errors": {t["target"]: t["errors"] for t in targets},
            "best": best,
            "best_margin": margin,
        })  # fmt: skip
    return {
        "workload": body["workload"],
        "params": body["params"],
        "count": body["count"],
        "concurrency": body["concurrency"],
        "parameter": spec.name,
        "values": spec.values,
        "targets": {t["target"]: t["kind"] for t in reports[0]["targets"]},
        # How many jobs each target runs at once (a pool's worker slots): gevent's 100
        # against threads' 8 is half of any comparison between them.
        "target_concurrency": {t["target"]: t["concurrency"] for t in reports[0]["targets"]},
        "where": where(reports[0]["topology"]),
        "runs": runs,
        "crossover": crossover(spec, [point["best"] for point in runs]),
    }


def sweep_title(figures: dict[str, Any]) -> str:
    fixed = ", ".join(f"{k}={value_label(v)}" for k, v in figures["params"].items())
    return f"{figures['workload']}({fixed}) x{figures['count']}: jobs/s by {figures['parameter']}"


def at_once(figures: dict[str, Any]) -> str:
    slots = figures.get("target_concurrency", {})
    return "jobs at once: " + ", ".join(f"{target} {n}" for target, n in slots.items())


def sweep_table(figures: dict[str, Any]) -> Table:
    """Jobs/s, a row per value and a column per target, and the best with its lead over
    the next: a lead of a few percent is within a shared machine's noise."""
    name = figures["parameter"]
    table = Table(title=sweep_title(figures), caption=f"on {figures['where']}; {at_once(figures)}")
    table.add_column(name, justify="right")
    for target in figures["targets"]:
        table.add_column(target, justify="right")
    table.add_column("best", justify="left")
    for point in figures["runs"]:
        cells = []
        for target in figures["targets"]:
            cell = f"{point['throughput_per_s'][target]:.1f}"
            if errors := point["errors"][target]:
                cell += f" ({errors} err)"
            cells.append(f"[bold]{cell}[/]" if target == point["best"] else cell)
        margin = point["best_margin"]
        lead = "" if margin is None else f" +{margin:.0%}"
        table.add_row(value_label(point["value"]), *cells, point["best"] + lead)
    return table


def render_sweep(figures: dict[str, Any], fmt: str = "svg") -> bytes:
    """A sweep drawn: jobs/s per target against the parameter, a line each (pools solid,
    local executors dashed, as the lab tells them apart), the crossover note beneath."""
    figure, axes = plt.subplots(figsize=(8, 5))
    values = figures["values"]
    positions = swept_axis(axes, values, figures["parameter"])
    slots = figures.get("target_concurrency", {})
    for target, kind in figures["targets"].items():
        pool = kind == "pool"
        label = f"{target} ({slots[target]} at once)" if target in slots else target
        axes.plot(
            positions, [point["throughput_per_s"][target] for point in figures["runs"]],
            marker="o" if pool else "s", linestyle="-" if pool else "--", label=label,
        )  # fmt: skip
    drawn = [v for point in figures["runs"] for v in point["throughput_per_s"].values()]
    spread_axis(axes, drawn, "throughput (jobs/s{}) - higher is better")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    kinds = set(figures["targets"].values())
    lines = {"pool": "solid: Celery pools", "local": "dashed: local executors"}
    legend = ", ".join(lines[kind] for kind in ("pool", "local") if kind in kinds)
    axes.set_title(f"{sweep_title(figures)}\non {figures['where']}; {legend}", fontsize=10)
    figure.supxlabel(textwrap.fill(figures["crossover"], 100), fontsize=9)
    return figure_bytes(figure, fmt)


def write_sweep(figures: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(figures, indent=2))
    for fmt in ("svg", "png"):
        (out / f"sweep.{fmt}").write_bytes(render_sweep(figures, fmt))
    console.print(f"wrote {out}/sweep.json, sweep.svg, sweep.png")


def param_sweep(client: Client, body: dict[str, Any], spec: SweepSpec, out: Path | None) -> None:
    """The experiment once per value of the swept parameter, one after another (the lab
    runs one experiment at a time anyway); then the table, the crossover and the chart."""
    experiments = []
    for number, value in enumerate(spec.values, start=1):
        console.print(f"[bold]{spec.label(value)}[/] ({number} of {len(spec.values)})")
        params = {**body["params"], spec.name: value}
        try:
            experiments.append(run_with_progress(client, {**body, "params": params}))
        except ApiError as exc:
            done = ", ".join(e["id"] for e in experiments) or "none"
            raise ApiError(f"at {spec.label(value)}: {exc} (finished before: {done})") from None
    figures = sweep_figures(spec, body, experiments)
    console.print(sweep_table(figures))
    console.print(f"  {figures['crossover']}")
    if out:
        write_sweep(figures, out)


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
        if spec:
            check_sweep(spec, body["params"], catalog_entry(client, workload))
        body["local"] = resolve_local(client, workload, local)
        if spec:
            param_sweep(client, body, spec, out)
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
