"""Where raygpu keeps its local state ($RAYGPU_HOME, default ~/.raygpu) and what it knows of the
local cluster started by `raygpu up --local`. No Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
from pydantic import BaseModel

HOME_ENV = "RAYGPU_HOME"


def raygpu_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".raygpu").expanduser()


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
    # the cluster's state: control-plane store (state.db), ledger (ledger.db), weight blobs (weights/)
    state_dir: str
    # GPU node types of Ray's fake multi-node autoscaler (`--fake-nodes`), as capacity.NodeType dicts
    fake_nodes: list[dict] = []
    pids: list[int]
    # pid -> process start time (psutil create_time): `raygpu down` signals a recorded pid only
    # while it still names the process raygpu started, never a stranger that reused the number.
    process_starts: dict[int, float] = {}
    started_at: float

    @property
    def ports(self) -> list[int]:
        """Every TCP port the cluster listens on that raygpu chose or was given."""
        ports = [self.http_port, self.serve_port, self.metrics_port, int(self.address.rsplit(":", 1)[1])]
        dashboard = self.dashboard_url.rsplit(":", 1)[-1]
        if dashboard.isdigit():
            ports.append(int(dashboard))
        return ports

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


def default_state_dir() -> Path:
    """Where a cluster keeps its state unless told otherwise (`--state-dir`)."""
    return raygpu_home()


OWNER_FILE = "owner.json"


class StateDirInUse(Exception):
    pass


def claim_state_dir(state_dir: str | Path, address: str, pid: int) -> None:
    """Make `state_dir` the state of the control plane run by process `pid` for the cluster at
    `address`. Refused while another control plane that is still running holds it: two clusters
    never share a store, a ledger or weights."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    owner_path = directory / OWNER_FILE
    try:
        owner = json.loads(owner_path.read_text())
    except (OSError, ValueError):
        owner = None
    if isinstance(owner, dict) and owner.get("pid") != pid:
        holder = recorded_process(int(owner.get("pid", 0) or 0), owner.get("started"))
        if holder is not None:
            raise StateDirInUse(
                f"state dir {directory} is in use by the raygpu control plane of the cluster at "
                f"{owner.get('address')} (pid {holder.pid}); give this cluster its own with --state-dir"
            )
    owner_path.write_text(json.dumps({"address": address, "pid": pid, "started": process_start(pid)}))


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


def process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def recorded_process(pid: int, started: float | None) -> psutil.Process | None:
    """The process `pid` if it is still the one recorded (same start time), else None."""
    if started is None:
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) > 0.05:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def local_cluster_alive(cluster: LocalCluster) -> bool:
    return bool(cluster_processes(cluster.temp_dir)) or any(
        recorded_process(pid, cluster.process_starts.get(pid)) for pid in cluster.pids
    )
