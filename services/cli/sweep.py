"""`jobrunner compare --sweep NAME=v1,v2,...`: the same experiment once per value of one of
the workload's parameters, checked against its schema before anything runs; a table of
jobs/s per target by value, the crossover (where the fastest target changes), and with
--out the chart and sweep.json (docs/sweep.md)."""

from __future__ import annotations

import json
import operator
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from services.cli.app import console, parse_param, usage_error, where
from services.cli.client import ApiError, Client
from services.cli.scale import RunExperiment
from services.core.plotting import figure_bytes, plt, spread_axis, swept_axis, value_label


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


def param_sweep(
    client: Client,
    body: dict[str, Any],
    spec: SweepSpec,
    out: Path | None,
    run_experiment: RunExperiment,
) -> None:
    """The experiment once per value of the swept parameter, one after another (the lab
    runs one experiment at a time anyway); then the table, the crossover and the chart."""
    experiments = []
    for number, value in enumerate(spec.values, start=1):
        console.print(f"[bold]{spec.label(value)}[/] ({number} of {len(spec.values)})")
        params = {**body["params"], spec.name: value}
        try:
            experiments.append(run_experiment(client, {**body, "params": params}))
        except ApiError as exc:
            done = ", ".join(e["id"] for e in experiments) or "none"
            raise ApiError(f"at {spec.label(value)}: {exc} (finished before: {done})") from None
    figures = sweep_figures(spec, body, experiments)
    console.print(sweep_table(figures))
    console.print(f"  {figures['crossover']}")
    if out:
        write_sweep(figures, out)
