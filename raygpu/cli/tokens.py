"""`raygpu token create|revoke|ls`: per-app bearer tokens."""

from __future__ import annotations

import click
from rich.table import Table

from raygpu.cli.common import address_option, connect, console, echo_json, run, when


@click.group()
def token() -> None:
    """Per-app bearer tokens."""


@token.command("create")
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
@address_option
def token_create(app: str, as_json: bool, address: str | None) -> None:
    """Create a token for APP; it is printed once and only its hash is kept."""
    from raygpu.tokens import create_token

    connect(address)
    created = run(lambda: create_token(app))
    if as_json:
        echo_json(created)
        return
    console.print(f"token {created.id} for {app} (shown once, store it now):")
    click.echo(created.token)


@token.command("revoke")
@click.argument("app")
@click.argument("token_id")
@address_option
def token_revoke(app: str, token_id: str, address: str | None) -> None:
    """Revoke token TOKEN_ID of APP."""
    from raygpu.tokens import revoke_token

    connect(address)
    run(lambda: revoke_token(app, token_id))
    console.print(f"revoked {token_id}")


@token.command("ls")
@click.argument("app", required=False)
@click.option("--json", "as_json", is_flag=True)
@address_option
def token_ls(app: str | None, as_json: bool, address: str | None) -> None:
    """List tokens (ids and dates only; tokens themselves are never stored)."""
    from raygpu.tokens import list_tokens

    connect(address)
    tokens = run(lambda: list_tokens(app))
    if as_json:
        echo_json([t.model_dump() for t in tokens])
        return
    table = Table("id", "app", "created", "revoked")
    for t in tokens:
        table.add_row(t.id, t.app, when(t.created_at), when(t.revoked_at))
    console.print(table)


def register(root: click.Group) -> None:
    root.add_command(token)
