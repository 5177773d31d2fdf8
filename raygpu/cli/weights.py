"""`raygpu weights push|ls`: live weight updates of torch model deployments."""

from __future__ import annotations

import click
from rich.table import Table

from raygpu.cli.common import address_option, app_and_unit, cluster, console, echo_json, fail, run


def _split(target: str) -> tuple[str, str]:
    return app_and_unit(target, "APP/MODEL", "raygpu weights push shop/ranker ranker-v2.safetensors")


@click.group()
def weights() -> None:
    """Model weights of torch deployments: push new ones live, list the current ones."""


@weights.command("push")
@click.argument("target", metavar="APP/MODEL")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--model", "model_id", default=None, help="Which model of a multi-model deployment (default: the first).")
@click.option("--json", "as_json", is_flag=True)
@address_option
def weights_push(target: str, path: str, model_id: str | None, as_json: bool, address: str | None) -> None:
    """Replace the weights of running replicas without a redeploy (versioned)."""
    app, function = _split(target)
    target_cluster = cluster(address)
    out = run(lambda: target_cluster.weights_push(app, function, path, model_id))
    if as_json:
        echo_json(out)
        return
    console.print(
        f"[green]pushed[/green] {app}/{function} model {out['model']} weights v{out['version']}: "
        "running replicas switch after their current batch"
    )


@weights.command("ls")
@click.argument("target", metavar="APP/MODEL")
@click.option("--json", "as_json", is_flag=True)
@address_option
def weights_ls(target: str, as_json: bool, address: str | None) -> None:
    """Current weights version and file of each model."""
    app, function = _split(target)
    target_cluster = cluster(address)
    current = run(lambda: target_cluster.weights_ls(app, function))
    if as_json:
        echo_json(current)
        return
    if not current:
        fail(f"{target} has no recorded weights; is it a torch model deployment?")
    table = Table("model", "version", "source", "file")
    for model, entry in current.items():
        table.add_row(model, str(entry["version"]), entry["source"], entry["path"])
    console.print(table)


def register(root: click.Group) -> None:
    root.add_command(weights)
