"""`raygpu simulate`: replay a real trace through raygpu's policy and the baselines."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from raygpu.cli.common import console, fail


@click.command()
@click.option("--trace", "trace_path", required=True, type=click.Path(), help="Trace file (see --format).")
@click.option("--format", "trace_format", required=True, type=click.Choice(["azure2019", "azure2021", "azurellm2023"]))
@click.option(
    "--policy", "policies", multiple=True, help="Policy to replay (repeatable; default: raygpu and every baseline)."
)
@click.option("--start-time", default=30.0, show_default=True, help="Replica start time, seconds.")
@click.option("--inputs-per-replica", default=1, show_default=True)
@click.option("--gpus-per-replica", default=1, show_default=True)
@click.option("--price", "usd_per_gpu_hour", default=3.95, show_default=True, help="$ per GPU-hour.")
@click.option("--idle-window", default=60.0, show_default=True, help="raygpu's scaledown_window (fallback).")
@click.option("--function", "timeline_function", default=None, help="Function to plot (default: a typical one).")
@click.option("--plot", "plot_path", default=None, type=click.Path(), help="Write the plots to this PNG.")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write the result as JSON.")
def simulate(
    trace_path: str,
    trace_format: str,
    policies: tuple[str, ...],
    start_time: float,
    inputs_per_replica: int,
    gpus_per_replica: int,
    usd_per_gpu_hour: float,
    idle_window: float,
    timeline_function: str | None,
    plot_path: str | None,
    json_path: str | None,
) -> None:
    """Replay a real trace through raygpu's policy and the baselines; compare cold starts and cost."""
    from autoscaling.report import COLUMNS, default_timeline_function, plot, table_rows
    from autoscaling.simulator import SimulationParams
    from autoscaling.simulator import simulate as run_simulation
    from autoscaling.traces import load_trace

    try:
        trace = load_trace(trace_path, trace_format)
    except (OSError, ValueError, KeyError) as exc:
        fail(f"cannot read {trace_path} as {trace_format}: {exc}")
    function = timeline_function or (default_timeline_function(trace) if plot_path else None)
    if function is not None:
        try:
            function = trace.find(function).name
        except KeyError as exc:
            fail(exc.args[0])
    params = SimulationParams(
        start_time_s=start_time,
        inputs_per_replica=inputs_per_replica,
        gpus_per_replica=gpus_per_replica,
        usd_per_gpu_hour=usd_per_gpu_hour,
        idle_window_s=idle_window,
    )
    with console.status(f"replaying {trace.invocations:,} calls of {len(trace.functions)} functions..."):
        try:
            result = run_simulation(trace, list(policies) or None, params, timeline_function=function)
        except ValueError as exc:
            fail(str(exc))
    table = Table(
        "policy",
        *(title for _, title, _ in COLUMNS),
        title=f"{trace.format}: {trace.invocations:,} calls, start time {start_time:g} s",
    )
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    if json_path:
        out = {k: v for k, v in result.items() if k != "timelines"}
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2))
        console.print(f"wrote {json_path}")
    if plot_path:
        try:
            console.print(f"wrote {plot(result, trace, function, plot_path)}")
        except RuntimeError as exc:
            fail(str(exc))


def register(root: click.Group) -> None:
    root.add_command(simulate)
