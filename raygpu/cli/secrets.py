"""`raygpu secret create|ls|rm`: named sets of environment variables, encrypted in the cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from raygpu.cli.common import address_option, cluster, console, echo_json, fail, run, when


@click.group()
def secret() -> None:
    """Secrets: environment variables a function sees when its code runs (`secrets=[raygpu.Secret.from_name(...)]`)."""


def secret_values(pairs: tuple[str, ...], dotenv_file: str | None, json_file: str | None) -> dict[str, str]:
    """The variables of `raygpu secret create`, from KEY=VALUE arguments, a dotenv file, or a JSON object
    (a file, or `-` for stdin); ValueError naming what is wrong."""
    values: dict[str, str] = {}
    if dotenv_file is not None:
        from dotenv import dotenv_values

        loaded = dotenv_values(dotenv_file)
        empty = sorted(k for k, v in loaded.items() if v is None)
        if empty:
            raise ValueError(f"{dotenv_file}: {', '.join(empty)} has no value (write KEY=VALUE)")
        values.update({k: v for k, v in loaded.items() if v is not None})
    if json_file is not None:
        text = sys.stdin.read() if json_file == "-" else Path(json_file).read_text()
        try:
            loaded_json = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--from-json {json_file}: not JSON ({exc})") from None
        if not isinstance(loaded_json, dict) or not all(isinstance(v, str) for v in loaded_json.values()):
            raise ValueError(f"--from-json {json_file}: must be one JSON object of string values")
        values.update(loaded_json)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not KEY=VALUE")
        values[key] = value
    if not values:
        raise ValueError("give the variables: --from-dotenv FILE, --from-json FILE (or - for stdin), or KEY=VALUE")
    return values


@secret.command("create")
@click.argument("name")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--from-dotenv", "dotenv_file", type=click.Path(exists=True, dir_okay=False), help="A .env file.")
@click.option("--from-json", "json_file", default=None, help="A JSON object of string values: a file, or - (stdin).")
@click.option("--force", is_flag=True, help="Replace the secret if it exists (the next replicas that start see it).")
@click.option("--json", "as_json", is_flag=True)
@address_option
def secret_create(
    name: str,
    pairs: tuple[str, ...],
    dotenv_file: str | None,
    json_file: str | None,
    force: bool,
    as_json: bool,
    address: str | None,
) -> None:
    """Create secret NAME. KEY=VALUE arguments land in your shell history and in `ps` while this runs:
    prefer --from-dotenv FILE or --from-json - (stdin)."""
    try:
        values = secret_values(pairs, dotenv_file, json_file)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    target_cluster = cluster(address)
    created = run(lambda: target_cluster.secret_create(name, values, force))
    if as_json:
        echo_json(created)
        return
    console.print(f"secret {created.name}: {', '.join(created.keys)}" + (" (replaced)" if force else ""))


@secret.command("ls")
@click.option("--json", "as_json", is_flag=True)
@address_option
def secret_ls(as_json: bool, address: str | None) -> None:
    """List secrets: names, key names, times and the apps using them (never values)."""
    target_cluster = cluster(address)
    found = run(target_cluster.secret_ls)
    if as_json:
        echo_json([s.model_dump() for s in found])
        return
    table = Table("secret", "keys", "created", "updated", "used by")
    for s in found:
        table.add_row(s.name, ", ".join(s.keys), when(s.created_at), when(s.updated_at), ", ".join(s.apps) or "-")
    console.print(table)


@secret.command("rm")
@click.argument("name")
@click.option(
    "--force", is_flag=True, help="Remove it although a live version uses it (its next replicas fail to start)."
)
@address_option
def secret_rm(name: str, force: bool, address: str | None) -> None:
    """Remove secret NAME (refused while a live version uses it, unless --force)."""
    target_cluster = cluster(address)
    run(lambda: target_cluster.secret_rm(name, force))
    console.print(f"removed secret {name}")


def register(root: click.Group) -> None:
    root.add_command(secret)
