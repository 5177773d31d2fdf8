"""The `raygpu` command line: cluster lifecycle, deploys, status, calls, logs and tokens."""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table

from deployments import constants
from raygpu.errors import RaygpuError

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

address_option = click.option(
    "--address", envvar="RAYGPU_ADDRESS", default=None,
    help="Ray cluster address (default: the local cluster from `raygpu up --local`).",
)


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    sys.exit(code)


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RaygpuError as exc:
        _fail(str(exc))


def _connect(address: str | None) -> None:
    from raygpu.cluster import connect

    _run(lambda: connect(address))


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@click.group()
@click.version_option(package_name="raygpu")
def main() -> None:
    """raygpu: serverless GPU functions on your own Ray cluster."""


@main.command()
@click.option("--local", "local", is_flag=True, help="Start an embedded Ray cluster on this machine.")
@click.option("--gpus", default=constants.DEFAULT_LOCAL_GPUS, show_default=True, help="Logical GPUs (--local).")
@click.option("--accelerator", default=constants.DEFAULT_LOCAL_ACCELERATOR, show_default=True,
              help="Accelerator type the logical GPUs are labelled with (--local).")
@click.option("--cpus", default=constants.DEFAULT_LOCAL_LOGICAL_CPUS, show_default=True,
              help="Logical CPUs declared (--local).")
@click.option("--port", "http_port", default=constants.DEFAULT_HTTP_PORT, show_default=True, help="Gateway HTTP port.")
@click.option("--serve-port", default=None, type=int,
              help="Port of Serve's own HTTP proxy for plain Serve apps (default: a free port locally, PORT+1 on a cluster).")
@click.option("--metrics-port", default=None, type=int,
              help=f"Port of the Prometheus exporter (default: a free port locally, {constants.DEFAULT_METRICS_PORT} on a cluster).")
@click.option("--host", "http_host", default=None, help="Gateway bind address (local: 127.0.0.1, cluster: 0.0.0.0).")
@click.option("--db-path", default=None, help="SQLite file of the control-plane store.")
@click.option("--prices", "prices_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="GPU price table (YAML, see billing/prices.yaml; default: $RAYGPU_PRICES or the shipped one).")
@click.option("--warm-pool", default=constants.DEFAULT_WARM_POOL_SIZE, show_default=True, type=click.IntRange(0, 64),
              help="Idle warm worker processes (torch imported) kept per GPU node for replica starts; 0 disables.")
@click.option("--control-loop-interval", default=constants.DEFAULT_CONTROL_LOOP_INTERVAL_S, show_default=True,
              type=click.FloatRange(0.005, 5.0), help="Serve controller tick, seconds (--local; on a cluster set "
              "RAY_SERVE_CONTROL_LOOP_INTERVAL_S in cluster.yaml).")
@address_option
def up(local: bool, gpus: int, accelerator: str, cpus: int, http_port: int, serve_port: int | None,
       metrics_port: int | None, http_host: str | None, db_path: str | None, prices_path: str | None,
       warm_pool: int, control_loop_interval: float, address: str | None) -> None:
    """Start a local cluster (--local), or install raygpu on a running Ray cluster (--address)."""
    from raygpu import cluster

    if local:
        with console.status("starting a local Ray cluster and the raygpu gateway..."):
            info = _run(lambda: cluster.start_local(
                gpus=gpus, accelerator=accelerator or None, http_port=http_port,
                http_host=http_host or constants.DEFAULT_HTTP_HOST, serve_port=serve_port, logical_cpus=cpus,
                db_path=db_path, metrics_port=metrics_port, prices_path=prices_path, warm_pool=warm_pool,
                control_loop_interval_s=control_loop_interval))
        console.print(f"[green]local cluster up[/green] at {info.address}")
        console.print(f"  gateway    {info.gateway_url}")
        console.print(f"  dashboard  {info.dashboard_url}")
        console.print(f"  serve      {info.serve_url} (Serve's proxy, for plain Serve apps)")
        console.print(f"  metrics    {info.metrics_url} (Prometheus)")
        console.print(f"  GPUs       {info.gpus} x {info.accelerator or 'unlabelled'} (logical)")
        console.print(f"  state      {info.db_path}")
        return
    if not address:
        _fail("say where: `raygpu up --local` for this machine, or `raygpu up --address HOST:PORT` "
              "for a cluster started with `ray up cluster.yaml`")
    # The control plane is installed by a driver that keeps running here (run this on the head node:
    # `ray exec cluster.yaml "raygpu up --address auto"`): Serve's controller belongs to its job,
    # and the warm pools need that job alive.
    resolved = "auto" if address == "auto" else address
    config = {"db_path": db_path or str(Path.home() / ".raygpu" / "state.db"), "http_host": http_host or "0.0.0.0",
              "http_port": http_port, "serve_port": serve_port,
              "metrics_port": metrics_port or constants.DEFAULT_METRICS_PORT,
              "prices_path": str(Path(prices_path).resolve()) if prices_path else None, "warm_pool": warm_pool}
    with console.status("installing the raygpu control plane..."):
        pid = _run(lambda: cluster.start_control_driver(resolved, Path.home() / ".raygpu", "cluster", config,
                                                        local=False))
    host = "127.0.0.1" if config["http_host"] in ("0.0.0.0", "::") else config["http_host"]
    console.print(f"[green]raygpu is up[/green]; gateway http://{host}:{http_port}, metrics "
                  f"http://{host}:{config['metrics_port']}/metrics (control-plane driver pid {pid})")


@main.command()
def down() -> None:
    """Stop the local cluster started by `raygpu up --local` (only its own processes)."""
    from raygpu import cluster

    if cluster.read_local_cluster() is None:
        console.print("no local raygpu cluster is running")
        return
    with console.status("stopping the local cluster..."):
        pids = cluster.stop_local()
    console.print(f"[green]stopped[/green] {len(pids)} processes")


@main.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@address_option
def deploy(target: str, as_json: bool, address: str | None) -> None:
    """Deploy FILE[::APP]: a new version, rolled out without dropping requests."""
    from raygpu.deploy import deploy_app, source_label
    from raygpu.loader import load_app

    app, path, digest = _run(lambda: load_app(target))
    _connect(address)
    with console.status(f"deploying {app.name} ({len(app.specs)} functions)..."):
        result = _run(lambda: deploy_app(app, source_label(path, digest)))
    if as_json:
        click.echo(result.model_dump_json())
        return
    console.print(f"[green]deployed[/green] {result.app} v{result.version}")
    for route in result.routes:
        console.print(f"  POST {result.gateway_url or ''}{route}")


@main.command("ls")
@click.option("--json", "as_json", is_flag=True)
@address_option
def ls(as_json: bool, address: str | None) -> None:
    """List deployed apps."""
    from raygpu.deploy import list_apps

    _connect(address)
    apps = _run(list_apps)
    if as_json:
        click.echo(apps.model_dump_json())
        return
    table = Table("app", "version", "functions", "deployed")
    for a in apps.apps:
        table.add_row(a.name, str(a.version), ", ".join(a.functions), _when(a.deployed_at))
    console.print(table)


@main.command()
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
@address_option
def status(app: str, as_json: bool, address: str | None) -> None:
    """Show an app's live version, replicas and last scale event per function."""
    from raygpu.deploy import app_status

    _connect(address)
    info = _run(lambda: app_status(app))
    if as_json:
        click.echo(info.model_dump_json())
        return
    console.print(f"[bold]{info.app}[/bold] v{info.version} (live since {_when(info.deployed_at)})")
    table = Table("function", "route", "gpu", "running", "starting", "stopping", "target", "last scale", "status")
    for f in info.functions:
        event = f.last_scale_event
        scale = f"{event.from_replicas}→{event.to_replicas} at {_when(event.time)}" if event else "-"
        table.add_row(f.name, f.route, f.gpu or "-", str(f.replicas.running), str(f.replicas.starting),
                      str(f.replicas.stopping), str(f.target), scale, f.status)
    console.print(table)
    for f in info.functions:
        if f.last_start_phases:
            total = sum(f.last_start_phases.values())
            console.print(f"last start of {f.name}: {total:.2f} s = " + ", ".join(
                f"{phase} {seconds * 1000:.0f} ms" for phase, seconds in f.last_start_phases.items()))


@main.command()
@click.argument("target")
@click.option("--data", default="{}", help="JSON object of keyword arguments.")
@click.option("--token", envvar="RAYGPU_TOKEN", default=None, help="Bearer token for apps that need one.")
@click.option("--url", envvar="RAYGPU_GATEWAY_URL", default=None, help="Gateway URL (default: the cluster's).")
@address_option
def call(target: str, data: str, token: str | None, url: str | None, address: str | None) -> None:
    """Call APP/FN (or APP/Class/method) over HTTP through the gateway and print the result."""
    from raygpu.deploy import gateway_url

    path = target.strip("/")
    if path.count("/") not in (1, 2):
        _fail("name the target as APP/FUNCTION or APP/Class/method")
    try:
        json.loads(data)
    except json.JSONDecodeError as exc:
        _fail(f"--data is not valid JSON: {exc}")
    if url is None:
        _connect(address)
        url = _run(gateway_url)
    request = urllib.request.Request(f"{url.rstrip('/')}/{path}", data=data.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:
            click.echo(response.read().decode())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        try:
            error = json.loads(body)["error"]
            _fail(f"HTTP {exc.code} {error['type']}: {error['message']}")
        except (ValueError, KeyError, TypeError):
            _fail(f"HTTP {exc.code}: {body}")
    except urllib.error.URLError as exc:
        _fail(f"cannot reach the gateway at {url}: {exc.reason}")


@main.command()
@click.argument("target")
@click.option("--lines", "-n", default=100, show_default=True)
@address_option
def logs(target: str, lines: int, address: str | None) -> None:
    """Print the latest replica log lines of APP or APP/FN."""
    from raygpu import cluster
    from raygpu.deploy import serve_app_name

    app, _, function = target.partition("/")
    _connect(address)
    local = cluster.read_local_cluster()
    pattern = f"replica_{serve_app_name(app)}_{function or ''}*.log"
    files: list[str] = []
    if local is not None and not address:
        files = sorted(glob.glob(os.path.join(local.temp_dir, "session_latest", "logs", "serve", pattern)))
        for path in files:
            console.rule(os.path.basename(path))
            click.echo("".join(Path(path).read_text(errors="replace").splitlines(keepends=True)[-lines:]))
    else:
        from ray.util.state import get_log, list_logs

        for node_id, groups in list_logs(glob_filter=pattern).items():
            for name in groups.get("serve", []):
                files.append(name)
                console.rule(name)
                for chunk in get_log(filename=f"serve/{name}", node_id=node_id, tail=lines):
                    click.echo(chunk, nl=False)
    if not files:
        console.print(f"no replica logs for {target} yet (replicas write logs once they start)")


@main.command()
@click.argument("app")
@address_option
def stop(app: str, address: str | None) -> None:
    """Delete an app: its routes, its Serve application and its replicas."""
    from raygpu.deploy import stop_app

    _connect(address)
    with console.status(f"stopping {app}..."):
        _run(lambda: stop_app(app))
    console.print(f"[green]stopped[/green] {app}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@address_option
def pool(as_json: bool, address: str | None) -> None:
    """The warm worker pool of each node: idle pre-started workers and their memory."""
    from deployments.warm_pool import pool_stats

    _connect(address)
    stats = pool_stats()
    if as_json:
        click.echo(json.dumps(stats))
        return
    if not stats:
        _fail("no warm pool runs on this cluster; `raygpu up` starts one per GPU node (--warm-pool N)")
    table = Table("node", "size", "idle", "starting", "memory", "started", "state")
    for s in stats:
        state = "ok" if s["available"] and not s["errors"] else (s["reason"] or s["last_error"] or "errors")
        table.add_row(s["node_id"][:12], str(s["size"]), ", ".join(str(w["pid"]) for w in s["idle"]) or "-",
                      str(s["pending"]), f"{s['idle_rss_bytes'] / 2**20:.0f} MiB", str(s["started"]), state)
    console.print(table)


@main.group()
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
    from raygpu.deploy import push_weights

    app, _, function = target.partition("/")
    if not function:
        _fail("name the deployment as APP/MODEL, e.g. `raygpu weights push shop/ranker ranker-v2.safetensors`")
    _connect(address)
    out = _run(lambda: push_weights(app, function, path, model_id))
    if as_json:
        click.echo(json.dumps(out))
        return
    console.print(f"[green]pushed[/green] {app}/{function} model {out['model']} weights v{out['version']}: "
                  "running replicas switch after their current batch")


@weights.command("ls")
@click.argument("target", metavar="APP/MODEL")
@click.option("--json", "as_json", is_flag=True)
@address_option
def weights_ls(target: str, as_json: bool, address: str | None) -> None:
    """Current weights version and file of each model."""
    from raygpu.deploy import current_weights

    app, _, function = target.partition("/")
    _connect(address)
    current = _run(lambda: current_weights(app, function))
    if as_json:
        click.echo(json.dumps(current))
        return
    if not current:
        _fail(f"{target} has no recorded weights; is it a torch model deployment?")
    table = Table("model", "version", "source", "file")
    for model, entry in current.items():
        table.add_row(model, str(entry["version"]), entry["source"], entry["path"])
    console.print(table)


@main.group()
def token() -> None:
    """Per-app bearer tokens."""


@token.command("create")
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
@address_option
def token_create(app: str, as_json: bool, address: str | None) -> None:
    """Create a token for APP; it is printed once and only its hash is kept."""
    import ray

    from raygpu.contracts import TokenCreated
    from raygpu.deploy import gateway_url, store, wait_for_gateway

    _connect(address)
    created = ray.get(_run(store).create_token.remote(app))
    _run(lambda: wait_for_gateway(gateway_url(), created["generation"], 30))
    out = TokenCreated(app=app, id=created["id"], token=created["token"])
    if as_json:
        click.echo(out.model_dump_json())
        return
    console.print(f"token {out.id} for {app} (shown once, store it now):")
    click.echo(out.token)


@token.command("revoke")
@click.argument("app")
@click.argument("token_id")
@address_option
def token_revoke(app: str, token_id: str, address: str | None) -> None:
    """Revoke token TOKEN_ID of APP."""
    import ray

    from raygpu.deploy import gateway_url, store, wait_for_gateway

    _connect(address)
    result = ray.get(_run(store).revoke_token.remote(app, token_id))
    if not result["revoked"]:
        _fail(f"app {app!r} has no active token {token_id!r}; `raygpu token ls {app}` lists them")
    _run(lambda: wait_for_gateway(gateway_url(), result["generation"], 30))
    console.print(f"revoked {token_id}")


@token.command("ls")
@click.argument("app", required=False)
@click.option("--json", "as_json", is_flag=True)
@address_option
def token_ls(app: str | None, as_json: bool, address: str | None) -> None:
    """List tokens (ids and dates only; tokens themselves are never stored)."""
    import ray

    from raygpu.contracts import TokenInfo
    from raygpu.deploy import store

    _connect(address)
    tokens = [TokenInfo(**t) for t in ray.get(_run(store).tokens.remote(app))]
    if as_json:
        click.echo(json.dumps([t.model_dump() for t in tokens]))
        return
    table = Table("id", "app", "created", "revoked")
    for t in tokens:
        table.add_row(t.id, t.app, _when(t.created_at), _when(t.revoked_at))
    console.print(table)


def _parse_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        _fail(f"cannot read {text!r} as a time: use ISO 8601 (2026-11-27T10:00) or a Unix timestamp")
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)).timestamp()


def _meter(address: str | None) -> Any:
    import ray

    from billing.meter import METER_ACTOR_NAME, METER_NAMESPACE

    _connect(address)
    try:
        return ray.get_actor(METER_ACTOR_NAME, namespace=METER_NAMESPACE)
    except ValueError:
        _fail("the cluster has no raygpu meter; run `raygpu up` again to install it")


@main.command("bill")
@click.argument("app", required=False)
@click.option("--since", default=None, help="Start (ISO 8601 UTC or Unix time).")
@click.option("--until", default=None, help="End (ISO 8601 UTC or Unix time).")
@click.option("--by", type=click.Choice(["function", "day"]), default="function", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True)
@address_option
def bill_command(app: str | None, since: str | None, until: str | None, by: str, as_json: bool, as_csv: bool,
                 address: str | None) -> None:
    """GPU-seconds by phase (cold start, active, idle) and cost per function."""
    from decimal import Decimal

    import ray

    from raygpu.contracts import Bill, BillLineOut

    meter = _meter(address)
    raw = ray.get(meter.bill.remote(app, _parse_time(since), _parse_time(until), by == "day"))
    lines = [BillLineOut(app=r["app"], function=r["function"], day=r["day"], gpu_seconds=r["gpu_seconds"],
                         cost_usd=r["cost_usd"], replica_starts=r["replica_starts"],
                         total_gpu_seconds=str(sum(Decimal(v) for v in r["gpu_seconds"].values())),
                         total_cost_usd=str(sum(Decimal(v) for v in r["cost_usd"].values()))) for r in raw]
    out = Bill(app=app, since=_parse_time(since), until=_parse_time(until), by=by, lines=lines,
               total_gpu_seconds=str(sum((Decimal(line.total_gpu_seconds) for line in lines), Decimal(0))),
               total_cost_usd=str(sum((Decimal(line.total_cost_usd) for line in lines), Decimal(0))))
    if as_json:
        click.echo(out.model_dump_json())
        return
    phases = ("cold_start", "active", "idle")
    if as_csv:
        click.echo(",".join(["app", "function", "day", *(f"{p}_gpu_s" for p in phases), "gpu_s", "cost_usd"]))
        for line in out.lines:
            click.echo(",".join([line.app, line.function, line.day or "", *(line.gpu_seconds[p] for p in phases),
                                 line.total_gpu_seconds, line.total_cost_usd]))
        return
    table = Table("app", "function", *(["day"] if by == "day" else []), "cold start GPU-s", "active GPU-s",
                  "idle GPU-s", "starts", "cost $")
    for line in out.lines:
        table.add_row(line.app, line.function, *([line.day or ""] if by == "day" else []),
                      *(f"{Decimal(line.gpu_seconds[p]):.1f}" for p in phases), str(line.replica_starts),
                      f"{Decimal(line.total_cost_usd):.4f}")
    console.print(table)
    console.print(f"total: {Decimal(out.total_gpu_seconds):.1f} GPU-s, ${Decimal(out.total_cost_usd):.4f}")


@main.command()
@click.argument("target", required=False, metavar="[APP[/FUNCTION]]")
@click.option("--since", default=None, help="Start (ISO 8601 UTC or Unix time).")
@click.option("--until", default=None, help="End (ISO 8601 UTC or Unix time).")
@click.option("--dedicated", "dedicated", default=None, metavar="LOW-HIGH",
              help="Dedicated GPU rent, $ per GPU-hour (default 2.00-8.00).")
@click.option("--per-request", "per_request", default=None, metavar="LOW-HIGH",
              help="Per-request API price, $ per request (default 0.01-0.10).")
@click.option("--json", "as_json", is_flag=True)
@address_option
def cost(target: str | None, since: str | None, until: str | None, dedicated: str | None, per_request: str | None,
         as_json: bool, address: str | None) -> None:
    """Which is cheaper for my traffic: as billed, dedicated GPUs by the hour, or per request."""
    import ray

    from billing.cost import (DEFAULT_API_USD_PER_REQUEST, DEFAULT_DEDICATED_USD_PER_GPU_HOUR, PriceRange,
                              compare_costs)
    from billing.intervals import BillLine, Interval

    try:
        dedicated_range = PriceRange.parse(dedicated or DEFAULT_DEDICATED_USD_PER_GPU_HOUR)
        api_range = PriceRange.parse(per_request or DEFAULT_API_USD_PER_REQUEST)
    except ValueError as exc:
        _fail(f"{exc} (give $ amounts as LOW-HIGH, e.g. --dedicated 2.00-8.00)")
    app, _, function = (target or "").partition("/")
    lo, hi = _parse_time(since), _parse_time(until)
    meter = _meter(address)
    usage = ray.get(meter.usage.remote(app or None, function or None, lo, hi))
    if not usage["intervals"] and not usage["requests"]:
        _fail(f"no recorded usage for {target or 'any app'}"
              f"{' in that period' if since or until else ''}; check the name with `raygpu ls`")
    comparison = compare_costs(
        [Interval(**iv) for iv in usage["intervals"]], [BillLine(**line) for line in usage["bill"]], usage["requests"],
        dedicated_usd_per_gpu_hour=dedicated_range, api_usd_per_request=api_range,
        app=app or None, function=function or None, since=lo, until=hi)
    if as_json:
        click.echo(comparison.model_dump_json())
        return
    titles = {"serverless": "serverless (as billed)", "dedicated": "dedicated GPUs, hourly", "per_request": "per-request API"}
    table = Table("option", "cost $", "basis", title=f"{target or 'all apps'}: {comparison.requests} requests over "
                  f"{float(comparison.period_s) / 3600:.2f} h, peak {comparison.peak_replicas} replicas / "
                  f"{comparison.peak_gpus} GPUs")
    for option in comparison.options:
        price = (f"{option.low_usd:.4f}" if option.low_usd == option.high_usd
                 else f"{option.low_usd:.4f} - {option.high_usd:.4f}")
        mark = " [green](cheapest)[/green]" if option.option == comparison.cheapest else ""
        table.add_row(titles[option.option] + mark, price, option.basis)
    console.print(table)
    if comparison.utilisation is not None:
        console.print(f"utilisation of the rented GPUs: {comparison.utilisation:.2%}")
    if comparison.break_even_utilisation is not None:
        low, high = comparison.break_even_utilisation.low, comparison.break_even_utilisation.high
        console.print(f"dedicated GPUs pay off above {low:.1%} utilisation (at the low price) to "
                      + (f"{high:.1%} (at the high price)" if high <= 1 else "never (at the high price)"))
    if comparison.serverless_usd_per_request is not None:
        console.print(f"serverless cost per request: ${comparison.serverless_usd_per_request}")
    if comparison.cheapest and not comparison.cheapest_at_any_price:
        console.print("the ranges overlap: the cheapest option depends on the prices you get")


@main.command()
@click.option("--trace", "trace_path", required=True, type=click.Path(), help="Trace file (see --format).")
@click.option("--format", "trace_format", required=True, type=click.Choice(["azure2019", "azure2021", "azurellm2023"]))
@click.option("--policy", "policies", multiple=True,
              help="Policy to replay (repeatable; default: raygpu and every baseline).")
@click.option("--start-time", default=30.0, show_default=True, help="Replica start time, seconds.")
@click.option("--inputs-per-replica", default=1, show_default=True)
@click.option("--gpus-per-replica", default=1, show_default=True)
@click.option("--price", "usd_per_gpu_hour", default=3.95, show_default=True, help="$ per GPU-hour.")
@click.option("--idle-window", default=60.0, show_default=True, help="raygpu's scaledown_window (fallback).")
@click.option("--function", "timeline_function", default=None, help="Function to plot (default: a typical one).")
@click.option("--plot", "plot_path", default=None, type=click.Path(), help="Write the plots to this PNG.")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write the result as JSON.")
def simulate(trace_path: str, trace_format: str, policies: tuple[str, ...], start_time: float,
             inputs_per_replica: int, gpus_per_replica: int, usd_per_gpu_hour: float, idle_window: float,
             timeline_function: str | None, plot_path: str | None, json_path: str | None) -> None:
    """Replay a real trace through raygpu's policy and the baselines; compare cold starts and cost."""
    from autoscaling.report import COLUMNS, default_timeline_function, plot, table_rows
    from autoscaling.simulator import SimulationParams
    from autoscaling.simulator import simulate as run_simulation
    from autoscaling.traces import load_trace

    try:
        trace = load_trace(trace_path, trace_format)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"cannot read {trace_path} as {trace_format}: {exc}")
    function = timeline_function or (default_timeline_function(trace) if plot_path else None)
    if function is not None and function not in {f.name for f in trace.functions}:
        _fail(f"the trace has no function {function!r}")
    params = SimulationParams(start_time_s=start_time, inputs_per_replica=inputs_per_replica,
                              gpus_per_replica=gpus_per_replica, usd_per_gpu_hour=usd_per_gpu_hour,
                              idle_window_s=idle_window)
    with console.status(f"replaying {trace.invocations:,} calls of {len(trace.functions)} functions..."):
        try:
            result = run_simulation(trace, list(policies) or None, params, timeline_function=function)
        except ValueError as exc:
            _fail(str(exc))
    table = Table("policy", *(title for _, title, _ in COLUMNS),
                  title=f"{trace.format}: {trace.invocations:,} calls, start time {start_time:g} s")
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    if json_path:
        out = {k: v for k, v in result.items() if k != "timelines"}
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2))
        console.print(f"wrote {json_path}")
    if plot_path:
        try:
            console.print(f"wrote {plot(result, trace, function, plot_path)}")
        except RuntimeError as exc:
            _fail(str(exc))


if __name__ == "__main__":
    main()
