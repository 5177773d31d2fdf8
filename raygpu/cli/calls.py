"""`raygpu calls show CALL_ID`: the stages of one call, as the meter recorded them."""

from __future__ import annotations

import click
from rich.table import Table

from raygpu.cli.common import address_option, cluster, console, run, when
from raygpu.ops.contracts import CallStages


def stages_table(stages: CallStages) -> Table:
    table = Table("#", "function", "replica", "attempt", "started", "duration s", "status", title=stages.call_id)
    for n, stage in enumerate(stages.stages, start=1):
        table.add_row(
            str(n),
            f"{stage.app}/{stage.function}",
            stage.replica,
            str(stage.attempt),
            when(stage.started_at),
            f"{stage.duration_s:.3f}",
            str(stage.status),
        )
    return table


@click.group("calls")
def calls_group() -> None:
    """Calls by id: what ran under one call (each function of a pipeline, each retry)."""


@calls_group.command("show")
@click.argument("call_id")
@click.option("--json", "as_json", is_flag=True)
@address_option
def show(call_id: str, as_json: bool, address: str | None) -> None:
    """The stages of CALL_ID (the gateway's x-raygpu-call-id, a spawned call's id): the function,
    replica, attempt, start, duration and status of each, in the order they started."""
    target = cluster(address)
    stages = run(lambda: target.call_show(call_id))
    if as_json:
        click.echo(stages.model_dump_json())
    else:
        console.print(stages_table(stages))


def register(root: click.Group) -> None:
    root.add_command(calls_group)
