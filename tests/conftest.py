"""Shared by both suites: paths, and the one real local raygpu cluster per test session that live
tests ask for (started and stopped through the real CLI; unit tests never start it)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
APPS = Path(__file__).resolve().parent / "live" / "apps"
FAKE_NODES = "A10G:2,L4:1:2"
# The test cluster's periods, set through `raygpu up`'s own options where the product's are long: an
# idle fake node goes after this long, a gateway connection has this long to send headers and body.
FAKE_NODE_IDLE_TIMEOUT_S = 8
CLIENT_TIMEOUT_S = 4
CALLBACK_ALLOW = "127.0.0.1/32"


class Cluster:
    def __init__(self, home: Path, url: str, env: dict[str, str]):
        self.home = home
        self.url = url
        self.env = env

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run a `raygpu` command against this cluster in this process: the real command line (the
        same click group the console script runs), attached through this process's connection to
        the cluster, without a new interpreter and Ray driver per command. `real_cli` runs the
        installed console script instead."""
        from click.testing import CliRunner

        from raygpu.cli import main

        result = CliRunner().invoke(main, list(args), catch_exceptions=True)
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "".join(traceback.format_exception(result.exception))
        return subprocess.CompletedProcess(["raygpu", *args], result.exit_code, result.stdout, stderr)

    def real_cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the installed `raygpu` console script against this cluster (a process of its own)."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "raygpu"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def post(self, path: str, json_body=None, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}{path}", json=json_body, timeout=kwargs.pop("timeout", 120), **kwargs)

    def deploy(self, file: str | Path) -> dict:
        from raygpu.ops.deploy import deploy_app, source_label
        from raygpu.sdk.loader import load_app

        app, path, digest = load_app(str(file))
        return deploy_app(app, source_label(path, digest)).model_dump()

    def deployed_app(self, file: Path):
        """Deploy `file` and return its App as the SDK loads it (to call `fn.map`, `fn.spawn`, ...)."""
        from raygpu.sdk.loader import load_app

        result = self.deploy(file)
        app, _, _ = load_app(str(file))
        assert result["app"] == app.name
        return app

    def status(self, app: str):
        from raygpu.ops.deploy import app_status

        return app_status(app)

    def wait_for(self, predicate, timeout: float = 60, interval: float = 0.25, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def cluster():
    home = Path(tempfile.mkdtemp(prefix="raygpu-test-home-"))
    from raygpu.controlplane.local_cluster import free_port

    port = free_port()
    # models staged in node memory by this session's vLLM replicas (`raygpu down` removes them)
    stage_dir = str(Path("/dev/shm" if Path("/dev/shm").is_dir() else home) / f"raygpu-test-models-{home.name}")
    env = dict(os.environ, RAYGPU_HOME=str(home), RAY_AUTH_MODE="disabled", RAYGPU_MODEL_STAGE_DIR=stage_dir)
    env.pop("RAYGPU_ADDRESS", None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYGPU_HOME", str(home))
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.setenv("RAYGPU_MODEL_STAGE_DIR", stage_dir)
        patch.delenv("RAYGPU_ADDRESS", raising=False)
        yield from _run_cluster(home, port, env)


@pytest.fixture(scope="session")
def examples(cluster):
    """The shipped hello and embeddings apps, deployed once for every module that calls them."""
    return {name: cluster.deploy(ROOT / "examples" / f"{name}.py") for name in ("hello", "embeddings")}


def _run_cluster(home: Path, port: int, env: dict[str, str]):
    up = subprocess.run(
        [
            str(Path(sys.executable).parent / "raygpu"),
            "up",
            "--local",
            "--gpus",
            "8",
            "--accelerator",
            "H100",
            # GPU pools from zero nodes that only Ray's fake multi-node autoscaler launches: the
            # head's logical H100s serve the other tests, these types the node-pool tests.
            "--fake-nodes",
            FAKE_NODES,
            "--node-idle-timeout",
            str(FAKE_NODE_IDLE_TIMEOUT_S),
            # the webhook receivers the tests start listen on loopback
            "--callback-allow",
            CALLBACK_ALLOW,
            "--header-timeout",
            str(CLIENT_TIMEOUT_S),
            "--body-timeout",
            str(CLIENT_TIMEOUT_S),
            "--port",
            str(port),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert up.returncode == 0, f"raygpu up failed:\n{up.stdout}\n{up.stderr}"
    from raygpu.sdk.connection import connect, disconnect
    from raygpu.sdk.home import cluster_processes, read_local_cluster

    connect()
    info = read_local_cluster()
    assert info is not None
    yield Cluster(home, f"http://127.0.0.1:{port}", env)
    disconnect()
    down = subprocess.run(
        [str(Path(sys.executable).parent / "raygpu"), "down"], env=env, capture_output=True, text=True, timeout=120
    )
    assert down.returncode == 0, down.stderr
    assert not Path(env["RAYGPU_MODEL_STAGE_DIR"]).exists(), "`raygpu down` left staged models in node memory"
    from raygpu.controlplane.local_cluster import client_servers

    leftover = cluster_processes(info.temp_dir) + client_servers(int(info.address.rsplit(":", 1)[1]))
    assert not leftover, f"`raygpu down` left processes running: {[p.pid for p in leftover]}"
