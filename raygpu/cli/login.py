"""`raygpu login` and `raygpu logout`: the CLI's way to a cluster through its gateway."""

from __future__ import annotations

import click

from raygpu.cli.common import console, fail, run


@click.command()
@click.argument("url")
@click.option(
    "--token",
    envvar="RAYGPU_ADMIN_TOKEN",
    prompt="admin token",
    hide_input=True,
    help="The cluster's admin token (printed by `raygpu up`; $RAYGPU_HOME/admin.key on the head).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow plain HTTP to a host other than this machine (the admin token crosses the network in clear).",
)
@click.option(
    "--fingerprint",
    default=None,
    help="The SHA-256 fingerprint of the gateway's self-signed certificate (`raygpu up --tls-self-signed` "
    "printed it): only that certificate is accepted, without a CA.",
)
def login(url: str, token: str, insecure: bool, fingerprint: str | None) -> None:
    """Use the cluster behind the gateway at URL from this machine: later commands (deploy, status,
    logs, tokens, weights, bill, ...) go through the gateway with the admin token, kept in
    $RAYGPU_HOME/login.json (mode 0600). `--address` still attaches as a Ray driver. Plain HTTP to
    another host is refused unless --insecure (nothing is sent before that check)."""
    from raygpu.ops.operations import GatewayOperations, Login, plain_http_to_another_host, save_login

    if not url.startswith(("http://", "https://")):
        fail(f"{url!r} is not a gateway URL: give http(s)://HOST:PORT")
    from raygpu.sdk.pinning import normalize_fingerprint

    pinned = None
    if fingerprint:
        if not url.startswith("https://"):
            fail("--fingerprint pins an HTTPS gateway's certificate: give https://HOST:PORT")
        try:
            pinned = normalize_fingerprint(fingerprint)
        except ValueError as exc:
            fail(str(exc))
    login_record = Login(url=url.rstrip("/"), token=token.strip(), insecure=insecure, fingerprint=pinned)
    if plain_http_to_another_host(url):
        if not insecure:
            fail(
                f"{url} is plain HTTP to another host: the admin token would cross the network in clear. Use "
                "https:// (cluster.yaml shows how to turn TLS on), or add --insecure on a network you trust"
            )
        click.echo(f"warning: {url} is plain HTTP; the admin token crosses the network in clear", err=True)
    probe = run(lambda: GatewayOperations(login_record))
    apps = run(probe.ls)
    path = save_login(url, token.strip(), insecure, pinned)
    console.print(f"[green]logged in[/green] to {url.rstrip('/')} ({len(apps.apps)} apps); saved in {path}")


@click.command()
def logout() -> None:
    """Forget the login of `raygpu login` (commands use the local cluster or --address again)."""
    from raygpu.ops.operations import login_path

    path = login_path()
    if path.exists():
        path.unlink()
        console.print(f"logged out (removed {path})")
    else:
        console.print("not logged in")


def register(root: click.Group) -> None:
    for command in (login, logout):
        root.add_command(command)
