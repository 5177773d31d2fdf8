"""The CLI on a machine that reaches the cluster only through its gateway: `raygpu login URL`
with the admin token, then deploy (weights uploaded over the gateway), call, status, logs, tokens,
weights and the bill, with no Ray connection; without the token, nothing."""

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import APPS, ROOT

pytestmark = pytest.mark.slow


def laptop(home: Path, *args: str, extra: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `raygpu` CLI with its own home, no local cluster and no reachable Ray."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYGPU_", "RAY_ADDRESS"))}
    env.update(RAYGPU_HOME=str(home), RAY_ADDRESS="127.0.0.1:1", **(extra or {}))
    return subprocess.run(
        [str(Path(sys.executable).parent / "raygpu"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def admin_token(cluster):
    from raygpu.sdk.admin import admin_key

    return admin_key()


def test_without_the_admin_token_the_gateway_refuses_every_admin_call(cluster, tmp_path, admin_token):
    assert cluster.post("/_raygpu/admin/ls", {}).status_code == 401
    wrong = cluster.post("/_raygpu/admin/ls", {}, headers={"Authorization": "Bearer rga_" + "x" * 40})
    assert wrong.status_code == 403 and wrong.json()["error"]["type"] == "AdminCredentialRefused"
    # a wrong credential is refused before the body is read: a declared 100 MB body that never comes
    host, port = cluster.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /_raygpu/admin/weights_push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer rga_"
            + b"z" * 40
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        )
        answer = b""
        while b"}}" not in answer and (chunk := conn.recv(4096)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403") and b"AdminCredentialRefused" in answer, answer[:200]
    good = {"Authorization": f"Bearer {admin_token}"}
    assert cluster.post("/_raygpu/admin/nope", {}, headers=good).status_code == 404
    bad_body = cluster.post("/_raygpu/admin/status", {"app": 3, "extra": 1}, headers=good)
    assert bad_body.status_code == 400 and "extra" in bad_body.json()["error"]["message"]
    refused = laptop(tmp_path, "login", cluster.url, "--token", "rga_" + "y" * 40)
    assert refused.returncode == 1 and "not the cluster's" in refused.stderr
    assert not (tmp_path / "login.json").exists()
    anonymous = laptop(tmp_path, "ls", extra={"RAYGPU_GATEWAY": cluster.url})
    assert anonymous.returncode == 1 and "admin token" in anonymous.stderr


def test_a_laptop_deploys_calls_and_reads_status_and_the_bill_through_the_gateway(cluster, tmp_path, admin_token):
    import torch
    from safetensors.torch import save_file

    home = tmp_path / "home"
    out = laptop(home, "login", cluster.url, "--token", admin_token)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE((home / "login.json").stat().st_mode) == 0o600
    weights = tmp_path / "scaler.safetensors"
    save_file({"weight": torch.full((1, 4), 2.0)}, str(weights))
    try:
        out = laptop(
            home, "deploy", str(APPS / "remote.py"), "--json", extra={"RAYGPU_TEST_REMOTE_WEIGHTS": str(weights)}
        )
        assert out.returncode == 0, out.stderr
        deployed = json.loads(out.stdout)
        assert deployed["app"] == "remote" and "/remote/greet" in deployed["routes"]
        weights.unlink()  # uploaded: the cluster never reads this machine's disk
        out = laptop(home, "call", "remote/greet", "--data", '{"name": "laptop"}')
        assert out.returncode == 0 and json.loads(out.stdout) == "hello laptop", out.stderr
        scaled = cluster.post("/remote/scaler", {"inputs": [[1.0, 1.0, 1.0, 1.0]]})
        assert scaled.status_code == 200 and scaled.json()["outputs"] == [[8.0]]
        status = json.loads(laptop(home, "status", "remote", "--json").stdout)
        assert {f["name"] for f in status["functions"]} == {"greet", "scaler"}
        listed = json.loads(laptop(home, "ls", "--json").stdout)
        assert "remote" in [a["name"] for a in listed["apps"]]
        stored = json.loads(laptop(home, "weights", "ls", "remote/scaler", "--json").stdout)
        assert stored["default"]["path"].startswith("raygpu-blob://")
        created = json.loads(laptop(home, "token", "create", "remote", "--json").stdout)
        assert cluster.post("/remote/greet", {}).status_code == 401
        assert cluster.post("/remote/greet", {}, headers={"Authorization": f"Bearer {created['token']}"}).ok
        inputs = tmp_path / "names.jsonl"
        inputs.write_text('{"name": "a"}\n{"name": "b"}\n')
        mapped = laptop(home, "map", "remote/greet", str(inputs), "--token", created["token"])
        assert mapped.returncode == 0, mapped.stderr
        assert [json.loads(line) for line in mapped.stdout.splitlines()] == ["hello a", "hello b"]
        refused = laptop(home, "map", "remote/greet", str(inputs))
        assert refused.returncode == 1 and json.loads(refused.stdout.splitlines()[0])["error"]["type"] == "Unauthorized"
        secret = laptop(home, "token", "secret", "remote")
        assert secret.returncode == 0 and secret.stdout.startswith("whsec_"), secret.stderr
        assert laptop(home, "auth", "off", "remote", "--yes").returncode == 0
        bill = cluster.wait_for(
            lambda: (b := json.loads(laptop(home, "bill", "remote", "--json").stdout))["lines"] and b,
            timeout=60,
            what="the app's bill",
        )
        assert {line["function"] for line in bill["lines"]} >= {"greet"}
        logs = laptop(home, "logs", "remote/greet")
        assert logs.returncode == 0 and "greet" in logs.stdout
        missing = laptop(home, "status", "nosuchapp")
        assert missing.returncode == 1 and "not deployed" in missing.stderr
    finally:
        assert laptop(home, "stop", "remote").returncode == 0
    assert laptop(home, "logout").returncode == 0 and not (home / "login.json").exists()


def test_doctor_lists_what_each_node_can_run(cluster):
    """`raygpu doctor --json` as a driver of the cluster: this host, and a report made on each node
    (the head here; fake GPU nodes too while one is alive)."""
    out = cluster.cli("doctor", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["cluster"] is None and report["nodes"], report
    head = next(n for n in report["nodes"] if n["ray"]["head"])
    assert head["ray"]["gpus"] == 8 and "H100" in head["ray"]["accelerators"]
    cpu = head["cpu"]
    assert set(cpu["usable"]) == {"amx", "avx512"} and set(cpu["advertised"]) == {"amx", "avx512"}
    assert cpu["vllm_cpu_dtype"] in ("auto", "float32") and head["software"]["torch"]
    assert head["memory"]["available_bytes"] > 0 and report["host"]["cpu"]["usable"] == cpu["usable"]
