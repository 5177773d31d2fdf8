"""`raygpu deploy`, `ls`, `status`, `call`, `logs`, `stop`: apps on the cluster."""

from __future__ import annotations

import click
from rich.table import Table

from raygpu.cli.common import address_option, cluster, console, fail, run, when
from raygpu.cli.schedules import run_outcome
from raygpu.ops.contracts import AppStatus


@click.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--check",
    is_flag=True,
    help="Start one replica of each changed function (then let it scale to zero) before the version goes "
    "live; a function that cannot start keeps the live version serving and fails the deploy.",
)
@address_option
def deploy(target: str, as_json: bool, check: bool, address: str | None) -> None:
    """Deploy FILE[::APP]: a new version, rolled out beside the live one without dropping requests.
    Functions with min_containers > 0 (and, with --check, every changed one) must start before it
    goes live."""
    from raygpu.ops.deploy import source_label
    from raygpu.sdk.loader import load_app

    app, path, digest = run(lambda: load_app(target))
    target_cluster = cluster(address)
    with console.status(f"deploying {app.name} ({len(app.specs)} functions)..."):
        result = run(lambda: target_cluster.deploy(app, source_label(path, digest), check))
    if as_json:
        click.echo(result.model_dump_json())
        return
    console.print(f"[green]deployed[/green] {result.app} v{result.version}")
    if result.checked:
        console.print(f"  started and checked: {', '.join(result.checked)}")
    for route in result.routes:
        console.print(f"  POST {result.gateway_url or ''}{route}")


@click.command("ls")
@click.option("--json", "as_json", is_flag=True)
@address_option
def ls(as_json: bool, address: str | None) -> None:
    """List deployed apps."""
    target_cluster = cluster(address)
    apps = run(target_cluster.ls)
    if as_json:
        click.echo(apps.model_dump_json())
        return
    table = Table("app", "version", "functions", "deployed")
    for a in apps.apps:
        table.add_row(a.name, str(a.version), ", ".join(a.functions), when(a.deployed_at))
    console.print(table)


def status_lines(info: AppStatus) -> tuple[Table, list[str]]:
    """`raygpu status` as a table of units and a line per unit's last replica start."""
    table = Table("function", "route", "gpu", "running", "starting", "stopping", "target", "last scale", "status")
    for f in info.functions:
        event = f.last_scale_event
        scale = f"{event.from_replicas}→{event.to_replicas} at {when(event.time)}" if event else "-"
        table.add_row(
            f.name,
            f.route,
            f.gpu or "-",
            str(f.replicas.running),
            str(f.replicas.starting),
            str(f.replicas.stopping),
            str(f.target),
            scale,
            f.status,
        )
    waiting = [
        f"{f.name}: a replica is waiting for a {f.waiting_for_node} node (the autoscaler launches it)"
        for f in info.functions
        if f.waiting_for_node
    ]
    cancelled = [
        f"{f.name}: cancelled sync calls replaced {f.cancels['replaced_last_hour']:g} replicas in the last hour "
        f"(at most {f.cancels['limit_per_hour']:g}); {f.cancels['finished_after_cancel']:g} ran to their end instead"
        for f in info.functions
        if f.cancels
    ]
    scheduled = [
        f"{f.name}: {f.schedule.schedule}; next run {when(f.schedule.next_run)}; last run "
        + (
            f"{when(f.schedule.last_run.due_at or f.schedule.last_run.created_at)} ({run_outcome(f.schedule.last_run)}, "
            f"call {f.schedule.last_run.call_id or '-'})"
            if f.schedule.last_run
            else "none yet"
        )
        for f in info.functions
        if f.schedule
    ]
    warm = [f"{f.name}: {f.warm_workers}" for f in info.functions if f.warm_workers]
    starts = (
        scheduled
        + warm
        + waiting
        + cancelled
        + [
            f"last start of {f.name}: {sum(f.last_start_phases.values()):.2f} s = "
            + ", ".join(f"{phase} {seconds * 1000:.0f} ms" for phase, seconds in f.last_start_phases.items())
            for f in info.functions
            if f.last_start_phases
        ]
    )
    return table, starts


@click.command()
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
@address_option
def status(app: str, as_json: bool, address: str | None) -> None:
    """Show an app's live version, replicas and last scale event per function."""
    target_cluster = cluster(address)
    info = run(lambda: target_cluster.status(app))
    if as_json:
        click.echo(info.model_dump_json())
        return
    console.print(f"[bold]{info.app}[/bold] v{info.version} (live since {when(info.deployed_at)})")
    table, starts = status_lines(info)
    console.print(table)
    for line in starts:
        console.print(line)


@click.command()
@click.argument("target")
@click.option("--data", default="{}", help="JSON object of keyword arguments.")
@click.option("--token", envvar="RAYGPU_TOKEN", default=None, help="Bearer token for apps that need one.")
@click.option("--url", envvar="RAYGPU_GATEWAY_URL", default=None, help="Gateway URL (default: the cluster's).")
@address_option
def call(target: str, data: str, token: str | None, url: str | None, address: str | None) -> None:
    """Call APP/FN (or APP/Class/method) over HTTP through the gateway and print the result."""
    from raygpu.sdk.client import call_over_http
    from raygpu.sdk.errors import RaygpuError, RemoteCallError

    fingerprint = None
    if url is None:
        target_cluster = cluster(address)
        url = run(target_cluster.gateway_url)
        login = getattr(target_cluster, "login", None)  # a login pinned to a self-signed certificate
        fingerprint = login.fingerprint if login is not None and login.url == url else None
    try:
        click.echo(call_over_http(url, target, data, token, fingerprint=fingerprint))
    except RemoteCallError as exc:
        fail(f"HTTP {exc.status} {exc}")
    except (RaygpuError, ValueError) as exc:
        fail(str(exc))


@click.command()
@click.argument("target")
@click.option("--lines", "-n", default=100, show_default=True)
@address_option
def logs(target: str, lines: int, address: str | None) -> None:
    """Print the latest replica log lines of APP or APP/FN."""
    target_cluster = cluster(address)
    files = run(lambda: target_cluster.logs(target, lines))
    for name, text in files:
        console.rule(name)
        click.echo(text, nl=False)
    if not files:
        console.print(f"no replica logs for {target} yet (replicas write logs once they start)")


@click.command()
@click.argument("app")
@address_option
def stop(app: str, address: str | None) -> None:
    """Delete an app: its routes, its Serve application and its replicas."""
    target_cluster = cluster(address)
    with console.status(f"stopping {app}..."):
        run(lambda: target_cluster.stop(app))
    console.print(f"[green]stopped[/green] {app}")


def register(root: click.Group) -> None:
    for command in (deploy, ls, status, call, logs, stop):
        root.add_command(command)
