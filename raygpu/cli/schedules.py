"""`raygpu runs APP/FN` and `raygpu run APP/FN`: the runs of scheduled functions."""

from __future__ import annotations

import click
from rich.table import Table

from raygpu.cli.common import address_option, app_and_unit, cluster, console, echo_json, fail, run, when
from raygpu.ops.contracts import ScheduledRunInfo


def _split(target: str) -> tuple[str, str]:
    return app_and_unit(target, "APP/FN", "raygpu runs reports/nightly")


def run_outcome(r: ScheduledRunInfo) -> str:
    """A run's outcome in a few words: its status, duration, and why it was skipped or failed."""
    text = r.status
    if r.duration_s is not None:
        text += f" in {r.duration_s:.1f} s"
    if r.reason:
        text += f": {r.reason}"
    elif r.error:
        text += f": {r.error.get('type', 'Error')}: {r.error.get('message', '')}".rstrip(": ")
    return text


@click.command("runs")
@click.argument("target", metavar="APP/FN")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000), help="How many runs.")
@click.option("--json", "as_json", is_flag=True)
@address_option
def runs(target: str, limit: int, as_json: bool, address: str | None) -> None:
    """The latest runs of scheduled function APP/FN, newest first: when each was due, the spawned
    call it made (`GET /APP/calls/CALL_ID` has its record) and its outcome, or why it was skipped."""
    app, function = _split(target)
    target_cluster = cluster(address)
    found = run(lambda: target_cluster.schedule_runs(app, function, limit))
    if as_json:
        echo_json([r.model_dump() for r in found])
        return
    table = Table("due", "trigger", "started", "call", "outcome", title=f"{app}/{function}")
    for r in found:
        table.add_row(when(r.due_at), r.trigger, when(r.started_at), r.call_id or "-", run_outcome(r))
    console.print(table)


@click.command("run")
@click.argument("target", metavar="APP/FN")
@click.option("--json", "as_json", is_flag=True)
@address_option
def run_now(target: str, as_json: bool, address: str | None) -> None:
    """Run scheduled function APP/FN now, outside its schedule (a run record like a scheduled one's;
    `raygpu runs APP/FN` shows its outcome)."""
    app, function = _split(target)
    target_cluster = cluster(address)
    started = run(lambda: target_cluster.schedule_run(app, function))
    if as_json:
        echo_json(started)
        return
    if started.call_id is None:
        fail(f"{app}/{function} was not run: {started.reason}")
    console.print(f"started {app}/{function}: call {started.call_id} (`raygpu runs {target}` shows its outcome)")


def register(root: click.Group) -> None:
    root.add_command(runs)
    root.add_command(run_now)
