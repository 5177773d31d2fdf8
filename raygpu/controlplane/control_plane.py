"""Installing raygpu's control plane (store, meter, Serve, gateway, warm pools) on a cluster,
from a long-lived driver process that `raygpu up` starts and waits for."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve

from billing.meter import start_meter
from billing.prices import PRICES_ENV
from deployments import constants
from deployments.calls.callbacks import parse_networks
from deployments.calls.runner import start_call_runner
from deployments.calls.scheduler import start_scheduler
from deployments.gateway.http import ClientLimits
from deployments.gateway.server import build_gateway_application
from deployments.node.blobs import start_blobs
from deployments.node.warm_pool import start_warm_pools
from deployments.parking import start_parker
from deployments.store.actor import start_store
from raygpu.controlplane.admin_api import start_admin_api
from raygpu.controlplane.options import ControlPlaneOptions
from raygpu.ops.capacity import NodeType, node_types_from_config
from raygpu.sdk.admin import ADMIN_TOKEN_ENV, ClusterAdmin, admin_key_hash, ensure_admin_key
from raygpu.sdk.errors import NoClusterError

# The credential a control plane that created the store acts with (in its memory only).
INTERNAL_KEY_PREFIX = "rgi_"

# The credential this process's control plane acts with, once installed (held in memory only).
ACTING_CREDENTIAL: str | None = None

# Inside a cluster's state dir.
STORE_DB = "state.db"
LEDGER_DB = "ledger.db"
WEIGHT_BLOBS_DIR = "weights"


def ray_env(local: bool) -> dict[str, str]:
    env = dict(os.environ)
    if local:
        # A loopback-only single-machine cluster: Ray's token auth only gets in the way here.
        env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Replicas' print() and stdout land in their Serve replica log, where `raygpu logs` reads them.
    env.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    # A replica start skips Serve's post-init gc freeze (~0.1 s); the controller ticks faster.
    env.setdefault("RAY_SERVE_FREEZE_GC_ON_STARTUP", "0")
    env.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", str(constants.DEFAULT_CONTROL_LOOP_INTERVAL_S))
    return env


def start_control_driver(
    address: str,
    workdir: Path,
    tag: str,
    options: ControlPlaneOptions,
    timeout_s: float = 180.0,
    local: bool = True,
    admin: ClusterAdmin | None = None,
) -> int:
    """Start the long-lived driver that installs the control plane (see raygpu.controlplane.control_driver);
    return its pid once the control plane is up, or raise with the reason it is not. `tag` goes on
    its command line (a local cluster's temp dir, so `raygpu down` finds it). A cluster's `admin`
    credential reaches the driver on its stdin (never its command line, environment or a file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "raygpu-control-driver.json"
    ready.unlink(missing_ok=True)
    log = workdir / "raygpu-control-driver.log"
    cmd = [
        sys.executable,
        "-m",
        "raygpu.controlplane.control_driver",
        "--address",
        address,
        "--ready-file",
        str(ready),
        "--temp-dir",
        tag,
        "--config",
        options.model_dump_json(),
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=ray_env(local=local),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
    assert proc.stdin is not None
    credentials = {"key": admin.key, "hash": admin.key_hash} if admin is not None else None
    proc.stdin.write((json.dumps(credentials) + "\n").encode())
    proc.stdin.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready.exists():
            try:
                result = json.loads(ready.read_text())
            except ValueError:
                time.sleep(0.05)  # still being written
                continue
            if result.get("ok"):
                return proc.pid
            raise NoClusterError(
                f"installing the raygpu control plane failed: {result.get('error')}\n{result.get('traceback', '')}"
            )
        if proc.poll() is not None:
            raise NoClusterError(f"the control-plane driver exited with {proc.returncode}; see {log}")
        time.sleep(0.1)
    proc.kill()
    raise NoClusterError(f"the control plane did not come up within {timeout_s:g} s; see {log}")


def install_control_plane(options: ControlPlaneOptions, cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start (or find) the store actor, the meter, Serve and the gateway on the connected cluster.
    The autoscaler's node types (`node_types`, or read from the `autoscaling_config` YAML) are
    recorded for deploys: a GPU pool at zero nodes is still a place a function can run.

    The admin credential: a local cluster's is this machine's file; a cluster's (`cluster`: the key
    when the operator gave it, and its hash) is only a hash on the head. A control plane that
    creates the store acts with a credential of its own, held in memory; one that finds the store
    running acts with the operator's key and refuses to start without it."""
    o = options
    state_dir, http_host, http_port, serve_port = o.state_dir, o.http_host, o.http_port, o.serve_port
    metrics_port = o.metrics_port or constants.DEFAULT_METRICS_PORT
    tls_cert, tls_key, public_url = o.tls_cert, o.tls_key, o.public_url
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    operator_key = ensure_admin_key() if cluster is None else cluster.get("key")
    operator_hash = admin_key_hash(operator_key) if cluster is None else str(cluster["hash"])
    own = INTERNAL_KEY_PREFIX + secrets.token_urlsafe(32)
    store = start_store(str(state / STORE_DB), operator_hash, admin_key_hash(own))
    admin = _acting_credential(store, own, operator_key)
    prices_path = o.prices_path or os.environ.get(PRICES_ENV)
    start_meter(
        str(state / LEDGER_DB),
        str(Path(prices_path).resolve()) if prices_path else None,
        metrics_port,
        http_host,
        store_actor=constants.STORE_ACTOR_NAME,
        store_namespace=constants.RAY_NAMESPACE,
    )
    start_blobs(str(state / WEIGHT_BLOBS_DIR))
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # Serve's own proxy serves plain Serve apps next to raygpu; raygpu's gateway listens itself.
    serve.start(
        http_options={"host": http_host, "port": serve_port or http_port + 1},
        proxy_location="HeadOnly",
    )
    serve.run(
        build_gateway_application(
            http_host,
            http_port,
            ClientLimits(header_timeout_s=o.header_timeout_s, body_timeout_s=o.body_timeout_s),
            tls_cert,
            tls_key,
        ),
        name=constants.GATEWAY_APP_NAME,
        route_prefix=None,
    )
    start_warm_pools(o.warm_pool, admin, o.warm_memory)
    start_admin_api()
    # Spawned calls: how long their records are kept, where webhooks may go, and the runner.
    ray.get(store.set_setting.remote(admin, "call_retention_s", float(o.call_retention_s)))
    ray.get(store.set_setting.remote(admin, "callback_allow", [str(n) for n in parse_networks(o.callback_allow)]))
    ray.get(store.set_setting.remote(admin, "call_storage_per_app", int(o.call_storage_per_app)))
    ray.get(store.set_setting.remote(admin, "cancel_grace_s", float(o.cancel_grace_s)))
    ray.get(store.set_setting.remote(admin, "cancel_replacements_per_hour", int(o.cancel_replacements_per_hour)))
    start_call_runner(ray.get(store.webhook_signing_key.remote(admin)))
    start_scheduler(admin)  # scheduled functions run as spawned calls through the runner

    host = "127.0.0.1" if http_host in ("0.0.0.0", "::") else http_host
    gateway_url = f"{'https' if tls_cert else 'http'}://{host}:{http_port}"
    ray.get(store.set_setting.remote(admin, "gateway_url", gateway_url))
    ray.get(store.set_setting.remote(admin, "public_url", public_url.rstrip("/") if public_url else None))
    # On a cluster the head runs the control plane only: user replicas go to worker nodes.
    ray.get(store.set_setting.remote(admin, "replicas_off_head", o.replicas_off_head))
    types = list(o.node_types)
    if o.autoscaling_config:
        types = read_node_types(o.autoscaling_config)
    ray.get(store.set_setting.remote(admin, "node_types", [t.model_dump() for t in types]))
    ray.get(store.set_setting.remote(admin, "metrics_url", f"http://{host}:{metrics_port}/metrics"))
    # Functions at rest leave Serve after this long (0: never); the parker reads it on each pass.
    ray.get(store.set_setting.remote(admin, "park_after_s", float(o.park_after_s)))
    global ACTING_CREDENTIAL
    ACTING_CREDENTIAL = admin  # what the driver's node watch gives the warm pools of nodes that join
    restored, forgotten = restore_apps_serve_lost(store, admin)
    ray.get(start_parker(admin).resync.remote())
    return {
        "gateway_url": gateway_url,
        "public_url": public_url or gateway_url,
        "serve_url": f"http://{host}:{serve_port or http_port + 1}",
        "metrics_url": f"http://{host}:{metrics_port}/metrics",
        "restored_apps": restored,
        "forgotten_apps": forgotten,
    }


def _acting_credential(store: Any, own: str, operator_key: str | None) -> str:
    """The credential this control plane acts with: its own when it created the store, else the
    operator's key (NoClusterError when the running store takes neither)."""
    for credential in (own, operator_key):
        if not credential:
            continue
        try:
            if ray.get(store.check_admin.remote(credential)):
                return credential
        except PermissionError:
            continue
    raise NoClusterError(
        "the control-plane store is already running and does not accept this admin credential: give the key "
        f"`raygpu up` printed for this cluster (${ADMIN_TOKEN_ENV}=rga_... raygpu up --address ...)"
    )


def read_node_types(path: str) -> list[NodeType]:
    """The worker node types of an autoscaler YAML (on a `ray up` head: ~/ray_bootstrap_config.yaml)."""
    try:
        config = yaml.safe_load(Path(path).expanduser().read_text())
        return node_types_from_config(config if isinstance(config, dict) else {})
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise NoClusterError(f"cannot read the autoscaler's node types from {path}: {exc}") from None


def restore_apps_serve_lost(store: Any, admin: str) -> tuple[list[str], list[str]]:
    """Redeploy the live versions Serve no longer runs (a restarted head, `raygpu down` and `up`
    on the same state dir) from the code payloads the store kept; apps whose code the store does
    not have (recorded before it kept code) are marked stopped, so the gateway never routes to a
    missing application. Returns (restored, forgotten)."""
    from deployments.serve_apps import app_names, options_from, options_key, run_version
    from deployments.spec import DeployedFunction
    from raygpu.ops.placement import worker_resource

    running = set(app_names())
    restored, forgotten = [], []
    for app in ray.get(store.live_apps.remote()):
        functions = [DeployedFunction.model_validate(f) for f in app["functions"]]
        if functions and all(f.serve_app in running for f in functions):
            continue
        payloads = ray.get(store.version_payloads.remote(admin, app["name"], app["version"])) if functions else {}
        if not functions or any(f.spec.name not in payloads for f in functions):
            ray.get(store.delete_app.remote(admin, app["name"]))
            forgotten.append(app["name"])
            continue
        serve_app = functions[0].serve_app
        options = options_from(ray.get(store.get_setting.remote(options_key(serve_app), None)))
        options = options.model_copy(
            update={"worker_resource": worker_resource(), "initial_replicas": {}, "app_workers": []}
        )
        ray.get(store.set_setting.remote(admin, options_key(serve_app), options.model_dump()))
        run_version(serve_app, app["name"], app["version"], functions, payloads, options)
        restored.append(app["name"])
    return restored, forgotten
