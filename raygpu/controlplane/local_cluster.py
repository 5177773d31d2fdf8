"""The local cluster: `start_local` runs a persistent Ray head in a private temp dir (never the
machine's default one) with the control plane on it; `stop_local` stops exactly that cluster by
its process ids."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from deployments import constants
from deployments.engines.model_stage import clear_all as clear_all_staged
from deployments.node.warm_pool import system_config
from raygpu.controlplane.control_plane import ray_env, start_control_driver
from raygpu.controlplane.options import ControlPlaneOptions
from raygpu.ops.capacity import NodeType
from raygpu.sdk.connection import connect, disconnect
from raygpu.sdk.errors import NoClusterError
from raygpu.sdk.home import (
    LocalCluster,
    cluster_processes,
    default_state_dir,
    local_cluster_alive,
    local_state_path,
    process_start,
    raygpu_home,
    read_local_cluster,
    recorded_process,
)

# Ports raygpu picks for itself: above Ray's worker ports (10002-19999) and below the kernel's
# ephemeral range, where Ray's own servers bind port 0 and could take a port chosen earlier.
PICKED_PORT_RANGE = (20000, 30000)
# The head's node type in Ray's fake multi-node provider.
FAKE_HEAD_NODE_TYPE = "ray.head.default"


def free_port() -> int:
    """A currently free TCP port in PICKED_PORT_RANGE."""

    for _ in range(200):
        port = random.randrange(*PICKED_PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise NoClusterError(f"no free port in {PICKED_PORT_RANGE[0]}-{PICKED_PORT_RANGE[1]}; pass --port explicitly")


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on `port` now. SO_REUSEADDR, as every server sets: connections
    of a stopped server lingering in TIME_WAIT do not count as the port being in use."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_port_free(host: str, port: int, flag: str) -> None:
    if not port_free(host, port):
        raise NoClusterError(f"port {port} on {host} is already in use; pick another with {flag}")


def start_local(
    control: ControlPlaneOptions | None = None,
    *,
    gpus: int = constants.DEFAULT_LOCAL_GPUS,
    accelerator: str | None = constants.DEFAULT_LOCAL_ACCELERATOR,
    logical_cpus: int = constants.DEFAULT_LOCAL_LOGICAL_CPUS,
    include_dashboard: bool = True,
    control_loop_interval_s: float | None = None,
    fake_nodes: list[NodeType] | None = None,
    node_idle_timeout_s: float = constants.DEFAULT_FAKE_NODE_IDLE_TIMEOUT_S,
) -> LocalCluster:
    """Start a persistent local Ray head with logical GPUs, then the raygpu control plane on it.
    `fake_nodes`: GPU node types Ray's fake multi-node autoscaler launches on this machine (each a
    raylet of its own) when a replica asks for what only they have, and removes after
    `node_idle_timeout_s` idle: a GPU cluster whose pools scale from zero, on one machine.
    `control` (default: local_options()) says how the control plane runs; ports it leaves open are
    picked free here."""
    control = control or local_options()
    http_host, http_port, serve_port, metrics_port = (
        control.http_host,
        control.http_port,
        control.serve_port,
        control.metrics_port,
    )
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
    resources = {f"accelerator_type:{accelerator}": gpus} if accelerator and gpus else {}
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
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
    autoscaling_config = None
    if fake_nodes:
        autoscaling_config = str(Path(temp_dir) / "raygpu-fake-autoscaler.yaml")
        config = fake_cluster_config(
            {"CPU": logical_cpus, "GPU": gpus}, fake_nodes, f"127.0.0.1:{gcs_port}", node_idle_timeout_s
        )
        Path(autoscaling_config).write_text(yaml.safe_dump(config, sort_keys=False))
        cmd.append(f"--autoscaling-config={autoscaling_config}")
        env["RAY_FAKE_CLUSTER"] = "1"
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
        state_dir=control.state_dir,
        fake_nodes=[t.model_dump() for t in fake_nodes or []],
        pids=[p.pid for p in cluster_processes(temp_dir)],
        started_at=time.time(),
    )
    cluster.process_starts = _starts(cluster.pids)
    local_state_path().write_text(cluster.model_dump_json(indent=2))
    try:
        driver = start_control_driver(
            cluster.address,
            Path(cluster.temp_dir),
            cluster.temp_dir,
            control.model_copy(
                update={
                    "serve_port": cluster.serve_port,
                    "metrics_port": cluster.metrics_port,
                    "node_types": list(fake_nodes or []),
                }
            ),
        )
        cluster.pids.append(driver)
        cluster.process_starts = _starts(cluster.pids)
        local_state_path().write_text(cluster.model_dump_json(indent=2))
        connect(address)
    except Exception:
        stop_local()
        raise
    cluster.pids = sorted({*cluster.pids, *(p.pid for p in cluster_processes(temp_dir))})
    cluster.process_starts = _starts(cluster.pids)
    local_state_path().write_text(cluster.model_dump_json(indent=2))
    return cluster


def local_options(state_dir: str | None = None, **options: Any) -> ControlPlaneOptions:
    """The control plane's options for a cluster on this machine: the gateway on loopback, the state
    in `state_dir` (default: $RAYGPU_HOME/state)."""
    where = str(Path(state_dir).expanduser().resolve()) if state_dir else str(default_state_dir())
    return ControlPlaneOptions(state_dir=where, **{"http_host": constants.DEFAULT_HTTP_HOST, **options})


def fake_cluster_config(
    head_resources: dict[str, float], node_types: list[NodeType], gcs_address: str, idle_timeout_s: float
) -> dict:
    """The autoscaler configuration of a local fake multi-node cluster (Ray's `fake_multinode`
    provider): the head as started, plus `node_types` from zero nodes, all on loopback."""
    return {
        "cluster_name": "raygpu-local",
        "max_workers": sum(t.max_workers for t in node_types),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            FAKE_HEAD_NODE_TYPE: {"resources": head_resources, "max_workers": 0, "node_config": {}},
            **{
                t.name: {
                    "resources": t.resources,
                    "min_workers": t.min_workers,
                    "max_workers": t.max_workers,
                    "node_config": {},
                }
                for t in node_types
            },
        },
        "head_node_type": FAKE_HEAD_NODE_TYPE,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def _starts(pids: list[int]) -> dict[int, float]:
    return {pid: started for pid in pids if (started := process_start(pid)) is not None}


def stop_local(timeout_s: float = 15.0, ports_timeout_s: float = 30.0) -> list[int]:
    """Stop the local cluster by its own processes (never `ray stop`): those whose command line
    names its private temp dir, and recorded pids whose start time still matches. Returns the pids
    stopped once the cluster's ports are free again (a following `raygpu up` can bind them)."""
    cluster = read_local_cluster()
    if cluster is None:
        return []
    disconnect()
    procs = {p.pid: p for p in cluster_processes(cluster.temp_dir)}
    procs.update({p.pid: p for p in client_servers(int(cluster.address.rsplit(":", 1)[1]))})
    for pid in cluster.pids:
        if pid not in procs:
            proc = recorded_process(pid, cluster.process_starts.get(pid))
            if proc is not None:
                procs[pid] = proc
    # Workers and drivers first (the store, the meter, the control driver: what holds raygpu's
    # state), then Ray's own daemons: a raylet told to stop while its workers run waits for them.
    # Ray's GCS server and autoscaler monitor keep nothing of a local cluster's and linger after
    # SIGTERM: they get RAY_DAEMON_GRACE_S.
    stages = [[], [], []]
    for proc in procs.values():
        stages[_stop_stage(proc)].append(proc)
    alive: list[psutil.Process] = []
    for stage, grace_s in zip(stages, (timeout_s, timeout_s, RAY_DAEMON_GRACE_S)):
        for proc in stage:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        alive += wait_exited(stage, grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    wait_exited(alive, 5.0)
    clear_all_staged()  # models staged in this machine's memory go with its cluster
    local_state_path().unlink(missing_ok=True)
    wait_for_ports(cluster.http_host, cluster.ports, ports_timeout_s)
    return sorted(procs)


RAY_DAEMON_GRACE_S = 2.0
LINGERING_DAEMONS = ("/gcs_server", "autoscaler/_private/monitor.py")


def _stop_stage(proc: psutil.Process) -> int:
    """0: a Ray worker or driver; 1: a Ray daemon (raylet, dashboard, agents); 2: one that lingers."""
    try:
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0
    head = " ".join(cmdline[:3])
    if any(name in head for name in LINGERING_DAEMONS):
        return 2
    if (cmdline and cmdline[0].startswith("ray::")) or "raygpu.controlplane.control_driver" in head:
        return 0
    return 1


def wait_exited(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait up to `timeout_s` for the processes to exit; those still running. An exited process
    whose parent has not reaped it yet (a zombie) counts as exited (psutil.wait_procs waits on it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def client_servers(gcs_port: int) -> list[psutil.Process]:
    """The cluster's Ray client server: `ray start` leaves it behind as an orphan whose command line
    names the GCS address, not the temp dir."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if "ray.util.client.server" in cmdline and any(
                a.startswith("--address=") and a.endswith(f":{gcs_port}") for a in cmdline
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for_ports(host: str, ports: list[int], timeout_s: float) -> None:
    """Return once every port can be listened on again; NoClusterError naming those still held."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = [port for port in ports if not port_free(host, port)]
        if not held:
            return
        if time.monotonic() >= deadline:
            raise NoClusterError(
                f"the cluster's processes are stopped but port(s) {', '.join(map(str, held))} on {host} are "
                "still in use by another process"
            )
        time.sleep(0.1)
