"""`raygpu map`: one call of a function per line of a JSONL file, outputs in input order."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from raygpu.cli.common import address_option, cluster, fail, run
from raygpu.sdk.errors import RemoteCallError


def read_inputs(path: Path) -> list[dict[str, Any]]:
    """The keyword-argument objects of a JSONL file, one per non-blank line; a ValueError naming
    the first line that is not a JSON object."""
    inputs: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {number} is not JSON: {exc.msg}") from None
            if not isinstance(value, dict):
                raise ValueError(
                    f"{path} line {number} is a JSON {type(value).__name__}; each line must be an object of "
                    'keyword arguments, e.g. {"text": "hello"}'
                )
            inputs.append(value)
    return inputs


def output_line(value: Any) -> str:
    """One output as a line of JSON: the result, or `{"error": {"type", "message"}}`."""
    if isinstance(value, RemoteCallError):
        error: dict[str, Any] = {"type": value.error_type, "message": str(value).partition(": ")[2]}
        return json.dumps({"error": error})
    if isinstance(value, Exception):
        return json.dumps({"error": {"type": type(value).__name__, "message": str(value)}})
    return json.dumps(value)


@click.command("map")
@click.argument("target")
@click.argument("inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write outputs here (default: stdout)."
)
@click.option("--token", envvar="RAYGPU_TOKEN", default=None, help="Bearer token for apps that need one.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=1024),
    default=None,
    help="Calls at once (default: what the function's replicas take, as max_containers x max_inputs).",
)
@address_option
def map_command(
    target: str, inputs: Path, output: Path | None, token: str | None, concurrency: int | None, address: str | None
) -> None:
    """Call APP/FN (or APP/Class/method) once per line of INPUTS (a JSON object of keyword arguments
    per line), many at once; write one JSON line per output in input order, `{"error": {...}}` for a
    failed one. Exit status 1 when any failed."""
    try:
        arguments = read_inputs(inputs)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="INPUTS") from None
    target_cluster = cluster(address)
    outputs = run(lambda: target_cluster.map_inputs(target, arguments, token, concurrency))
    failed = 0
    sink: TextIO = open(output, "w", encoding="utf-8") if output else sys.stdout
    progress = Progress(
        TextColumn(f"{target}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    try:
        with progress:
            task = progress.add_task("map", total=len(arguments))
            for value in run(lambda: iter(outputs)):
                if isinstance(value, Exception):
                    failed += 1
                sink.write(output_line(value) + "\n")
                sink.flush()
                progress.advance(task)
    finally:
        if output:
            sink.close()
    if failed:
        fail(f"{failed} of {len(arguments)} input(s) failed (their lines hold the errors)")
    if output:
        Console(stderr=True).print(f"{len(arguments)} output(s) written to {output}")


def register(root: click.Group) -> None:
    root.add_command(map_command)
