"""`raygpu down` on fabricated state: it signals only processes whose pid and start time match
what it recorded, and returns once the cluster's ports are free."""

import socket
import subprocess
import sys
import time

import psutil
import pytest

from raygpu.controlplane.local_cluster import free_port, port_free, stop_local, wait_for_ports
from raygpu.sdk.errors import NoClusterError
from raygpu.sdk.home import LocalCluster, local_state_path


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def write_state(pids: list[int], starts: dict[int, float], ports: list[int], temp_dir: str) -> None:
    local_state_path().parent.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(
        address=f"127.0.0.1:{ports[0]}",
        temp_dir=temp_dir,
        dashboard_url=f"http://127.0.0.1:{ports[1]}",
        http_host="127.0.0.1",
        http_port=ports[2],
        serve_port=ports[3],
        metrics_port=ports[4],
        gpus=0,
        accelerator=None,
        logical_cpus=1,
        state_dir="/nonexistent/state",
        pids=pids,
        process_starts=starts,
        started_at=time.time(),
    )
    local_state_path().write_text(cluster.model_dump_json())


def test_down_signals_only_the_processes_it_started(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYGPU_HOME", str(tmp_path))
    ours, stranger, unrecorded = sleeper(), sleeper(), sleeper()
    try:
        started = psutil.Process(ours.pid).create_time()
        starts = {ours.pid: started, stranger.pid: started - 100.0}  # stranger: the pid was reused
        write_state([ours.pid, stranger.pid, unrecorded.pid], starts, [free_port() for _ in range(5)], "/nonexistent-x")
        stopped = stop_local(timeout_s=5, ports_timeout_s=5)
        assert stopped == [ours.pid]
        # gone when down returns (down reaped it: a sleeper of 60 s does not end by itself)
        assert not psutil.pid_exists(ours.pid) or psutil.Process(ours.pid).status() == psutil.STATUS_ZOMBIE
        assert stranger.poll() is None and unrecorded.poll() is None
        assert not local_state_path().exists()
    finally:
        for proc in (ours, stranger, unrecorded):
            proc.kill()
            proc.wait()


def test_down_waits_for_the_ports_and_names_the_ones_still_held(tmp_path, monkeypatch):
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        assert not port_free("127.0.0.1", port)
        started = time.monotonic()
        with pytest.raises(NoClusterError, match=str(port)):
            wait_for_ports("127.0.0.1", [port], 0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        holder.close()
    wait_for_ports("127.0.0.1", [port], 5)  # free again: returns at once


def test_a_port_with_only_time_wait_connections_counts_as_free():
    port = free_port()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server side closes first: its end lingers in TIME_WAIT
    client.close()
    server.close()
    assert port_free("127.0.0.1", port)


def test_two_control_planes_never_share_a_state_dir(tmp_path):
    import os
    import subprocess
    import sys

    from raygpu.sdk.home import StateDirInUse, claim_state_dir

    state = tmp_path / "state"
    claim_state_dir(state, "10.0.0.1:6379", os.getpid())  # this process runs a control plane on it
    with pytest.raises(StateDirInUse, match="10.0.0.1:6379.*--state-dir"):
        claim_state_dir(state, "10.0.0.2:6379", os.getpid() + 1)
    claim_state_dir(state, "10.0.0.1:6379", os.getpid())  # its own claim again: a restart
    # once the holder is gone (a stopped cluster, a crashed head), the next control plane takes it over
    other = tmp_path / "other"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    claim_state_dir(other, "10.0.0.3:6379", holder.pid)
    with pytest.raises(StateDirInUse):
        claim_state_dir(other, "10.0.0.4:6379", os.getpid())
    holder.kill()
    holder.wait()
    claim_state_dir(other, "10.0.0.4:6379", os.getpid())


def test_down_stops_workers_before_the_daemons_and_does_not_wait_on_exited_ones(tmp_path):
    from raygpu.controlplane.local_cluster import _stop_stage, wait_exited

    script = tmp_path / "ray" / "autoscaler" / "_private" / "monitor.py"
    script.parent.mkdir(parents=True)
    script.write_text("import time; time.sleep(60)")
    # a process titled as Ray titles its workers, a daemon, and one that lingers after SIGTERM
    worker = subprocess.Popen(["bash", "-c", "exec -a 'ray::ControlPlaneStore' sleep 60"])
    daemon = sleeper()
    lingering = subprocess.Popen([sys.executable, "-u", str(script)])
    try:
        time.sleep(0.3)
        stages = [_stop_stage(psutil.Process(p.pid)) for p in (worker, daemon, lingering)]
        assert stages == [0, 1, 2]
        worker.terminate()  # exited, not reaped yet: a zombie of this process counts as exited
        started = time.monotonic()
        assert wait_exited([psutil.Process(worker.pid)], 5.0) == []
        assert time.monotonic() - started < 2.0
        alive = wait_exited([psutil.Process(daemon.pid)], 0.3)
        assert [p.pid for p in alive] == [daemon.pid]
    finally:
        for proc in (worker, daemon, lingering):
            proc.kill()
            proc.wait()
