"""Finding, starting and stopping the Ray cluster raygpu runs on.

`start_local` runs a persistent Ray head in a private temp dir (never the machine's default one);
`stop_local` stops exactly that cluster by its process ids. `connect` attaches this process to the
cluster named by --address / RAYGPU_ADDRESS or the local one, and `install_control_plane` puts the
store, Serve and the gateway on it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel

from deployments import constants
from raygpu.errors import NoClusterError

ADDRESS_ENV = "RAYGPU_ADDRESS"
HOME_ENV = "RAYGPU_HOME"


def raygpu_home() -> Path:
    return Path(os.environ.get(HOME_ENV, Path.home() / ".raygpu")).expanduser()


def local_state_path() -> Path:
    return raygpu_home() / "local-cluster.json"


class LocalCluster(BaseModel):
    """What `raygpu up --local` started, kept in $RAYGPU_HOME/local-cluster.json."""

    address: str
    temp_dir: str
    dashboard_url: str
    http_host: str
    http_port: int
    serve_port: int
    metrics_port: int
    gpus: int
    accelerator: str | None
    logical_cpus: int
    db_path: str
    pids: list[int]
    started_at: float

    @property
    def gateway_url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"

    @property
    def serve_url(self) -> str:
        """Serve's own HTTP proxy, for plain Serve applications beside raygpu."""
        return f"http://{self.http_host}:{self.serve_port}"

    @property
    def metrics_url(self) -> str:
        """The meter's Prometheus exporter."""
        return f"http://{self.http_host}:{self.metrics_port}/metrics"


# Ports raygpu picks for itself: above Ray's worker ports (10002-19999) and below the kernel's
# ephemeral range, where Ray's own servers bind port 0 and could take a port chosen earlier.
PICKED_PORT_RANGE = (20000, 30000)


def free_port() -> int:
    """A currently free TCP port in PICKED_PORT_RANGE."""
    import random

    for _ in range(200):
        port = random.randrange(*PICKED_PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise NoClusterError(f"no free port in {PICKED_PORT_RANGE[0]}-{PICKED_PORT_RANGE[1]}; pass --port explicitly")


def ensure_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            raise NoClusterError(f"port {port} on {host} is already in use; pick another with {flag}") from None


def read_local_cluster() -> LocalCluster | None:
    path = local_state_path()
    if not path.exists():
        return None
    try:
        return LocalCluster.model_validate_json(path.read_text())
    except Exception:
        return None


def cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """Every process of the cluster whose private temp dir is `temp_dir`, with their descendants
    (agents and workers rename themselves, e.g. `ray::DashboardAgent`, and lose the path)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if temp_dir in cmdline and proc.pid != os.getpid():
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def local_cluster_alive(cluster: LocalCluster) -> bool:
    return any(psutil.pid_exists(pid) for pid in cluster.pids) and bool(cluster_processes(cluster.temp_dir))


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


def start_local(
    *,
    gpus: int = constants.DEFAULT_LOCAL_GPUS,
    accelerator: str | None = constants.DEFAULT_LOCAL_ACCELERATOR,
    http_port: int = constants.DEFAULT_HTTP_PORT,
    http_host: str = constants.DEFAULT_HTTP_HOST,
    serve_port: int | None = None,
    metrics_port: int | None = None,
    prices_path: str | None = None,
    logical_cpus: int = constants.DEFAULT_LOCAL_LOGICAL_CPUS,
    db_path: str | None = None,
    include_dashboard: bool = True,
    warm_pool: int = constants.DEFAULT_WARM_POOL_SIZE,
    control_loop_interval_s: float | None = None,
) -> LocalCluster:
    """Start a persistent local Ray head with logical GPUs, then the raygpu control plane on it."""
    existing = read_local_cluster()
    if existing and local_cluster_alive(existing):
        raise NoClusterError(
            f"a local raygpu cluster is already running at {existing.address} "
            f"(gateway {existing.gateway_url}); stop it with `raygpu down` first"
        )
    ensure_port_free(http_host, http_port, "--port")
    if serve_port is not None:
        ensure_port_free(http_host, serve_port, "--serve-port")
    if metrics_port is not None:
        ensure_port_free(http_host, metrics_port, "--metrics-port")
    home = raygpu_home()
    home.mkdir(parents=True, exist_ok=True)
    # Unix socket paths must stay short: keep Ray's temp dir directly under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="raygpu-")
    gcs_port = free_port()
    dashboard_port = free_port()
    from deployments.warm_pool import system_config

    resources = {f"accelerator_type:{accelerator}": gpus} if accelerator and gpus else {}
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
        f"--port={gcs_port}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={logical_cpus}",
        f"--num-gpus={gpus}",
        f"--resources={json.dumps(resources)}",
        f"--temp-dir={temp_dir}",
        f"--include-dashboard={'true' if include_dashboard else 'false'}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        "--disable-usage-stats",
        f"--system-config={json.dumps(system_config())}",
    ]
    env = ray_env(local=True)
    if control_loop_interval_s is not None:
        env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] = str(control_loop_interval_s)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise NoClusterError(f"`ray start` failed:\n{result.stdout}\n{result.stderr}")
    address = f"127.0.0.1:{gcs_port}"
    cluster = LocalCluster(
        address=address,
        temp_dir=temp_dir,
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        http_host=http_host,
        http_port=http_port,
        serve_port=serve_port or free_port(),
        metrics_port=metrics_port or free_port(),
        gpus=gpus,
        accelerator=accelerator if gpus else None,
        logical_cpus=logical_cpus,
        db_path=db_path or str(home / "state.db"),
        pids=[p.pid for p in cluster_processes(temp_dir)],
        started_at=time.time(),
    )
    local_state_path().write_text(cluster.model_dump_json(indent=2))
    try:
        driver = start_control_driver(cluster.address, Path(cluster.temp_dir), cluster.temp_dir, {
            "db_path": cluster.db_path, "http_host": http_host, "http_port": http_port,
            "serve_port": cluster.serve_port, "metrics_port": cluster.metrics_port,
            "prices_path": str(Path(prices_path).resolve()) if prices_path else None, "warm_pool": warm_pool})
        cluster.pids.append(driver)
        local_state_path().write_text(cluster.model_dump_json(indent=2))
        connect(address)
    except Exception:
        stop_local()
        raise
    cluster.pids = sorted({*cluster.pids, *(p.pid for p in cluster_processes(temp_dir))})
    local_state_path().write_text(cluster.model_dump_json(indent=2))
    return cluster


def start_control_driver(address: str, workdir: Path, tag: str, config: dict[str, Any],
                         timeout_s: float = 180.0, local: bool = True) -> int:
    """Start the long-lived driver that installs the control plane (see raygpu.control_driver);
    return its pid once the control plane is up, or raise with the reason it is not. `tag` goes on
    its command line (a local cluster's temp dir, so `raygpu down` finds it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "raygpu-control-driver.json"
    ready.unlink(missing_ok=True)
    log = workdir / "raygpu-control-driver.log"
    cmd = [sys.executable, "-m", "raygpu.control_driver", "--address", address, "--ready-file", str(ready),
           "--temp-dir", tag, "--config", json.dumps(config)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=ray_env(local=local), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
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
            raise NoClusterError(f"installing the raygpu control plane failed: {result.get('error')}\n"
                                 f"{result.get('traceback', '')}")
        if proc.poll() is not None:
            raise NoClusterError(f"the control-plane driver exited with {proc.returncode}; see {log}")
        time.sleep(0.1)
    proc.kill()
    raise NoClusterError(f"the control plane did not come up within {timeout_s:g} s; see {log}")


def stop_local(timeout_s: float = 15.0) -> list[int]:
    """Stop the local cluster by its own process ids (never `ray stop`); return the pids stopped."""
    cluster = read_local_cluster()
    if cluster is None:
        return []
    import ray

    from raygpu.client import close_handles

    close_handles()
    if ray.is_initialized():
        ray.shutdown()
    procs = {p.pid: p for p in cluster_processes(cluster.temp_dir)}
    for pid in cluster.pids:
        if pid not in procs and psutil.pid_exists(pid):
            try:
                procs[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                pass
    for proc in procs.values():
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    local_state_path().unlink(missing_ok=True)
    return sorted(procs)


def resolve_address(address: str | None = None) -> tuple[str, bool]:
    """(address, is_local): --address, then RAYGPU_ADDRESS, then the local cluster."""
    address = address or os.environ.get(ADDRESS_ENV)
    if address:
        return address, False
    cluster = read_local_cluster()
    if cluster and local_cluster_alive(cluster):
        return cluster.address, True
    raise NoClusterError(
        "no raygpu cluster is running: start one with `raygpu up --local`, or point at a cluster with "
        f"--address / {ADDRESS_ENV}=HOST:PORT"
    )


def connect(address: str | None = None) -> None:
    """Attach this process to the raygpu cluster (once per process)."""
    import ray

    if ray.is_initialized():
        return
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    resolved, local = resolve_address(address)
    if local:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(
            address=resolved,
            namespace=constants.RAY_NAMESPACE,
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as exc:
        raise NoClusterError(
            f"cannot reach the Ray cluster at {resolved}: {exc}; start one with `raygpu up --local` "
            f"or check --address / {ADDRESS_ENV}"
        ) from None


def install_control_plane(
    *,
    db_path: str,
    http_host: str = "0.0.0.0",
    http_port: int = constants.DEFAULT_HTTP_PORT,
    serve_port: int | None = None,
    metrics_port: int = constants.DEFAULT_METRICS_PORT,
    prices_path: str | None = None,
    warm_pool: int = constants.DEFAULT_WARM_POOL_SIZE,
) -> dict[str, Any]:
    """Start (or find) the store actor, the meter, Serve and the gateway on the connected cluster."""
    import ray
    from ray import serve

    from deployments.gateway import build_gateway_application
    from billing.meter import start_meter
    from deployments.store import start_store

    store = start_store(db_path)
    from billing.prices import PRICES_ENV

    prices_path = prices_path or os.environ.get(PRICES_ENV)
    start_meter(str(Path(db_path).with_name("ledger.db")), str(Path(prices_path).resolve()) if prices_path else None,
                metrics_port, http_host)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # Serve's own proxy serves plain Serve apps next to raygpu; raygpu's gateway listens itself.
    serve.start(
        http_options={"host": http_host, "port": serve_port or http_port + 1},
        proxy_location="HeadOnly",
    )
    forget_apps_serve_lost(store)
    serve.run(build_gateway_application(http_host, http_port), name=constants.GATEWAY_APP_NAME, route_prefix=None)
    from deployments.warm_pool import start_warm_pools

    start_warm_pools(warm_pool)

    host = "127.0.0.1" if http_host in ("0.0.0.0", "::") else http_host
    gateway_url = f"http://{host}:{http_port}"
    ray.get(store.set_setting.remote("gateway_url", gateway_url))
    ray.get(store.set_setting.remote("metrics_url", f"http://{host}:{metrics_port}/metrics"))
    return {"gateway_url": gateway_url, "serve_url": f"http://{host}:{serve_port or http_port + 1}",
            "metrics_url": f"http://{host}:{metrics_port}/metrics"}


def forget_apps_serve_lost(store: Any) -> list[str]:
    """Mark stopped the registry's live apps that Serve no longer runs (e.g. after `raygpu down`
    and `up` with the same state file), so the gateway never routes to a missing application."""
    import ray
    from ray import serve

    running = set(serve.status().applications)
    lost = [
        app["name"] for app in ray.get(store.live_apps.remote())
        if f"{constants.USER_APP_PREFIX}{app['name']}" not in running
    ]
    for name in lost:
        ray.get(store.delete_app.remote(name))
    return lost
