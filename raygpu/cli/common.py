"""What every command group shares: consoles, the --address option, failures as ClickExceptions."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from raygpu.sdk.errors import RaygpuError

T = TypeVar("T")

console = Console(width=None if sys.stdout.isatty() else 160)

address_option = click.option(
    "--address",
    envvar="RAYGPU_ADDRESS",
    default=None,
    help="Ray cluster address (default: the local cluster from `raygpu up --local`).",
)


def fail(message: str) -> NoReturn:
    """End the command with `message` on stderr and exit status 1 (no traceback)."""
    raise click.ClickException(message)


def run(fn: Callable[[], T]) -> T:
    """Call a library function, turning raygpu's errors (and refused values) into a clean failure."""
    try:
        return fn()
    except (RaygpuError, ValueError) as exc:
        fail(str(exc))


def app_and_unit(target: str, form: str, example: str) -> tuple[str, str]:
    """APP/NAME split in two; a clean failure naming the `form` (APP/FN, APP/MODEL) and showing
    `example` when it is not of that form."""
    app, _, unit = target.partition("/")
    if not app or not unit or "/" in unit:
        fail(f"name it as {form}, e.g. `{example}`")
    return app, unit


def connect(address: str | None) -> None:
    from raygpu.sdk.connection import connect as attach

    run(lambda: attach(address))


def when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def echo_json(payload: Any) -> None:
    """Print a pydantic model or a JSON-serialisable value as one line of JSON."""
    click.echo(payload.model_dump_json() if hasattr(payload, "model_dump_json") else json.dumps(payload))


def cluster(address: str | None) -> Any:
    """The cluster to act on: as a Ray driver (--address, the local cluster) or over the gateway
    of `raygpu login` (see raygpu.ops.operations)."""
    from raygpu.ops.operations import operations

    return run(lambda: operations(address))
