"""`raygpu token create|revoke|ls`: per-app bearer tokens."""

from __future__ import annotations

import click
from rich.table import Table

from raygpu.cli.common import address_option, cluster, console, echo_json, fail, run, when


@click.group()
def token() -> None:
    """Per-app bearer tokens."""


@token.command("create")
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
@address_option
def token_create(app: str, as_json: bool, address: str | None) -> None:
    """Create a token for APP; it is printed once and only its hash is kept."""
    target_cluster = cluster(address)
    created = run(lambda: target_cluster.token_create(app))
    if as_json:
        echo_json(created)
        return
    console.print(f"token {created.id} for {app} (shown once, store it now):")
    click.echo(created.token)


@token.command("secret")
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
@address_option
def token_secret(app: str, as_json: bool, address: str | None) -> None:
    """Print the secret APP's webhooks are signed with: a receiver checks that `x-raygpu-signature`
    is `sha256=` + the hex HMAC-SHA256 of the request body under it."""
    target_cluster = cluster(address)
    secret = run(lambda: target_cluster.webhook_secret(app))
    if as_json:
        echo_json(secret)
        return
    click.echo(secret.secret)


@token.command("revoke")
@click.argument("app")
@click.argument("token_id")
@address_option
def token_revoke(app: str, token_id: str, address: str | None) -> None:
    """Revoke token TOKEN_ID of APP."""
    target_cluster = cluster(address)
    run(lambda: target_cluster.token_revoke(app, token_id))
    console.print(f"revoked {token_id}")


@token.command("ls")
@click.argument("app", required=False)
@click.option("--json", "as_json", is_flag=True)
@address_option
def token_ls(app: str | None, as_json: bool, address: str | None) -> None:
    """List tokens (ids and dates only; tokens themselves are never stored)."""
    target_cluster = cluster(address)
    tokens = run(lambda: target_cluster.token_ls(app))
    if as_json:
        echo_json([t.model_dump() for t in tokens])
        return
    table = Table("id", "app", "created", "revoked")
    for t in tokens:
        table.add_row(t.id, t.app, when(t.created_at), when(t.revoked_at))
    console.print(table)


@click.group()
def auth() -> None:
    """Token protection of an app: on from its first token until `auth off`."""


@auth.command("on")
@click.argument("app")
@address_option
def auth_on(app: str, address: str | None) -> None:
    """Require a token on every route of APP (with no active token, nobody gets in)."""
    target_cluster = cluster(address)
    run(lambda: target_cluster.auth_set(app, True))
    console.print(f"{app} needs a token on every route; create one with `raygpu token create {app}`")


@auth.command("off")
@click.argument("app")
@click.option("--yes", is_flag=True, help="Confirm: APP becomes callable by anyone who reaches the gateway.")
@address_option
def auth_off(app: str, yes: bool, address: str | None) -> None:
    """Make APP public again: revokes its active tokens and stops asking for one."""
    if not yes:
        fail(f"`raygpu auth off {app}` lets anyone who reaches the gateway call {app}; add --yes to confirm")
    target_cluster = cluster(address)
    state = run(lambda: target_cluster.auth_set(app, False))
    console.print(f"{app} is public; {state.revoked_tokens} active token(s) revoked")


@auth.command("show")
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
@address_option
def auth_show(app: str, as_json: bool, address: str | None) -> None:
    """Whether APP needs a token."""
    target_cluster = cluster(address)
    state = run(lambda: target_cluster.auth_show(app))
    if as_json:
        echo_json(state)
        return
    console.print(f"{app}: {'token required' if state.protected else 'public'}")


def register(root: click.Group) -> None:
    root.add_command(token)
    root.add_command(auth)
