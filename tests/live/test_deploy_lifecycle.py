"""Deploys through the real CLI: versions, rolling updates, refused deploys, tokens, stop."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from conftest import APPS


def write_versioned(tmp_path: Path, answer: str) -> Path:
    path = tmp_path / "versioned.py"
    path.write_text((APPS / "versioned.py").read_text().replace('ANSWER = "v1"', f'ANSWER = "{answer}"'))
    return path


def test_cli_deploy_ls_status_and_rolling_redeploy(cluster, tmp_path):
    out = cluster.real_cli("deploy", str(write_versioned(tmp_path, "v1")), "--json")
    assert out.returncode == 0, out.stderr
    # The CLI detaches cleanly: no handle left running past ray.shutdown auto-starts a Ray instance.
    assert "current thread is not the main thread" not in out.stderr, out.stderr
    first = json.loads(out.stdout)
    assert first["routes"] == ["/versioned/which"]
    assert cluster.post("/versioned/which").json() == "v1"

    listed = json.loads(cluster.cli("ls", "--json").stdout)
    entry = next(a for a in listed["apps"] if a["name"] == "versioned")
    assert entry["version"] == first["version"] and entry["functions"] == ["which"]

    stop = threading.Event()
    seen: list[tuple[int, str, str]] = []

    def traffic():
        while not stop.is_set():
            try:
                r = requests.post(f"{cluster.url}/versioned/which", json={}, timeout=30)
                seen.append((r.status_code, r.text, r.headers.get("x-raygpu-version", "")))
            except requests.RequestException as exc:
                seen.append((0, repr(exc), ""))
            time.sleep(0.02)

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        out = cluster.cli("deploy", str(write_versioned(tmp_path, "v2")), "--json")
        assert out.returncode == 0, out.stderr
        second = json.loads(out.stdout)
        assert second["version"] == first["version"] + 1
        cluster.wait_for(lambda: any(s[1] == '"v2"' for s in seen[-5:]), timeout=60, what="v2 answers")
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join()
    failures = [s for s in seen if s[0] != 200]
    assert not failures, failures[:5]
    answers = [s[1] for s in seen]
    assert answers[0] == '"v1"' and answers[-1] == '"v2"'
    assert {s[2] for s in seen} == {str(first["version"]), str(second["version"])}

    status = json.loads(cluster.cli("status", "versioned", "--json").stdout)
    assert status["app"] == "versioned" and status["version"] == second["version"]
    which = status["functions"][0]
    assert which["name"] == "which" and which["route"] == "/versioned/which" and which["gpu"] is None
    assert set(which["replicas"]) == {"running", "starting", "stopping"} and which["replicas"]["running"] >= 1
    assert which["target"] >= 1


def test_broken_files_deploy_nothing_and_leave_apps_untouched(cluster):
    cluster.deploy(APPS / "guarded.py")
    before = json.loads(cluster.cli("ls", "--json").stdout)
    guarded_version = next(a["version"] for a in before["apps"] if a["name"] == "guarded")

    out = cluster.cli("deploy", str(APPS / "broken_import.py"))
    assert out.returncode == 1
    assert (
        "failed to import" in out.stderr and "broken on purpose" in out.stderr and "nothing was deployed" in out.stderr
    )

    out = cluster.cli("deploy", str(APPS / "broken_spec.py"))
    assert out.returncode == 1 and "max_inputs" in out.stderr

    out = cluster.cli("deploy", str(APPS / "missing.py"))
    assert out.returncode == 1 and "no such file" in out.stderr

    after = json.loads(cluster.cli("ls", "--json").stdout)
    assert after == before
    r = cluster.post("/guarded/add", {"a": 1, "b": 1})
    assert r.status_code == 200 and r.headers["x-raygpu-version"] == str(guarded_version)


def test_unknown_accelerator_is_refused_at_deploy(cluster):
    out = cluster.cli("deploy", str(APPS / "wrong_gpu.py"))
    assert out.returncode == 1
    assert "A100" in out.stderr and "H100" in out.stderr and "--accelerator" in out.stderr
    listed = json.loads(cluster.cli("ls", "--json").stdout)
    assert "wronggpu" not in [a["name"] for a in listed["apps"]]


def test_tokens_guard_every_route_of_an_app(cluster):
    cluster.deploy(APPS / "guarded.py")
    assert cluster.post("/guarded/add", {"a": 1}).status_code == 200
    out = cluster.cli("token", "create", "guarded", "--json")
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    token = created["token"]
    try:
        for path, method in [("/guarded/add", "post"), ("/guarded/docs", "get"), ("/guarded/nope", "post")]:
            r = requests.request(method, f"{cluster.url}{path}", json={"a": 1}, timeout=30)
            assert r.status_code == 401, path
            assert "raygpu token create guarded" in r.json()["error"]["message"]
            r = requests.request(
                method, f"{cluster.url}{path}", json={"a": 1}, timeout=30, headers={"Authorization": "Bearer rgt_wrong"}
            )
            assert r.status_code == 401
        good = {"Authorization": f"Bearer {token}"}
        assert cluster.post("/guarded/add", {"a": 1}, headers=good).json() == 2
        assert requests.get(f"{cluster.url}/guarded/docs", headers=good, timeout=30).status_code == 200
        out = cluster.cli("call", "guarded/add", "--data", '{"a": 3}', "--token", token)
        assert out.returncode == 0 and out.stdout.strip() == "4"
        listed = json.loads(cluster.cli("token", "ls", "guarded", "--json").stdout)
        assert [t["id"] for t in listed if t["revoked_at"] is None] == [created["id"]]
        assert token not in json.dumps(listed)
    finally:
        out = cluster.cli("token", "revoke", "guarded", created["id"])
        assert out.returncode == 0, out.stderr
    # the last token revoked: the app stays closed, to the old token and to callers without one
    for headers in ({"Authorization": f"Bearer {token}"}, {}):
        r = cluster.post("/guarded/add", {"a": 1}, headers=headers)
        # the answer of an app that is not deployed: whether the app exists, or has tokens, does not show
        unknown = cluster.post("/nowhere/add", {"a": 1}, headers=headers)
        assert r.status_code == unknown.status_code == 401
        assert r.json()["error"]["message"].replace("guarded", "APP") == unknown.json()["error"]["message"].replace(
            "nowhere", "APP"
        )
    out = cluster.cli("token", "revoke", "guarded", created["id"])
    assert out.returncode == 1 and "no active token" in out.stderr
    assert json.loads(cluster.cli("auth", "show", "guarded", "--json").stdout)["protected"] is True
    out = cluster.cli("auth", "off", "guarded")
    assert out.returncode == 1 and "--yes" in out.stderr
    assert cluster.post("/guarded/add", {"a": 1}).status_code == 401
    out = cluster.cli("auth", "off", "guarded", "--yes")
    assert out.returncode == 0, out.stderr
    assert cluster.post("/guarded/add", {"a": 1}).json() == 2
    from raygpu.sdk.home import read_local_cluster

    logs = Path(read_local_cluster().temp_dir, "session_latest", "logs")
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert token.encode() not in path.read_bytes(), f"token leaked into {path}"


def test_logs_and_stop(cluster, tmp_path):
    app_file = tmp_path / "logging_app.py"
    app_file.write_text(
        "import raygpu\napp = raygpu.App('loggy')\n\n"
        "@app.function(scaledown_window=30)\ndef shout(word: str) -> str:\n"
        "    print('LOGGED', word, flush=True)\n    return word.upper()\n"
    )
    cluster.deploy(app_file)
    assert cluster.post("/loggy/shout", {"word": "marker-xyz"}).json() == "MARKER-XYZ"
    cluster.wait_for(
        lambda: "marker-xyz" in cluster.cli("logs", "loggy/shout").stdout, timeout=30, what="the replica's log line"
    )
    out = cluster.cli("stop", "loggy")
    assert out.returncode == 0, out.stderr
    r = cluster.post("/loggy/shout", {"word": "x"})
    assert r.status_code == 401 and "'loggy' is not deployed" in r.json()["error"]["message"]
    out = cluster.cli("status", "loggy")
    assert out.returncode == 1 and "not deployed" in out.stderr
    out = cluster.cli("stop", "loggy")
    assert out.returncode == 1 and "not deployed" in out.stderr


def test_commands_without_a_cluster_say_how_to_start_one(tmp_path):
    env = dict(os.environ, RAYGPU_HOME=str(tmp_path))
    env.pop("RAYGPU_ADDRESS", None)
    out = subprocess.run(
        [str(Path(sys.executable).parent / "raygpu"), "ls"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "raygpu up --local" in out.stderr
    out = subprocess.run(
        [str(Path(sys.executable).parent / "raygpu"), "up"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "--local" in out.stderr


def test_up_refuses_a_port_in_use(cluster, tmp_path):
    env = dict(os.environ, RAYGPU_HOME=str(tmp_path))
    port = cluster.url.rsplit(":", 1)[1]
    out = subprocess.run(
        [str(Path(sys.executable).parent / "raygpu"), "up", "--local", "--port", port],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and f"port {port}" in out.stderr and "--port" in out.stderr


def test_a_restarted_control_plane_redeploys_the_live_versions_serve_lost(cluster):
    import ray
    from ray import serve

    from deployments.store.actor import get_store
    from raygpu.controlplane.control_plane import restore_apps_serve_lost
    from raygpu.ops.deploy import live_serve_app
    from raygpu.ops.tokens import create_token, set_auth
    from raygpu.sdk.admin import admin_key

    store = get_store()
    admin = admin_key()
    cluster.deploy(APPS / "guarded.py")
    created = create_token("guarded")
    good = {"Authorization": f"Bearer {created.token}"}
    version = next(a["version"] for a in ray.get(store.live_apps.remote()) if a["name"] == "guarded")
    # an app recorded without its code cannot come back: it is marked stopped, never routed to
    ghost = ray.get(store.begin_version.remote(admin, "ghost", "ghost.py@0", []))
    ray.get(store.mark_live.remote(admin, "ghost", ghost))
    try:
        serve.delete(live_serve_app("guarded"))  # what a head restart does to Serve's applications
        assert restore_apps_serve_lost(store, admin) == (["guarded"], ["ghost"])
        live = {a["name"]: a for a in ray.get(store.live_apps.remote())}
        assert "ghost" not in live and live["guarded"]["version"] == version
        answer = cluster.wait_for(
            lambda: (r := cluster.post("/guarded/add", {"a": 1}, headers=good)).status_code == 200 and r,
            timeout=120,
            what="the restored version to answer",
        )
        assert answer.json() == 2
        assert cluster.post("/guarded/add", {"a": 1}).status_code == 401  # its tokens still guard it
        assert restore_apps_serve_lost(store, admin) == ([], [])  # nothing lost any more
    finally:
        set_auth("guarded", False)


def test_a_revocation_reaches_every_gateway_replica_within_a_second(cluster):
    import ray

    from raygpu.ops.tokens import create_token, set_auth
    from raygpu.sdk.admin import admin_key
    from raygpu.sdk.control import store

    cluster.deploy(APPS / "guarded.py")
    created = create_token("guarded")
    good = {"Authorization": f"Bearer {created.token}"}
    try:
        assert cluster.post("/guarded/add", {"a": 1}, headers=good).status_code == 200
        # straight at the store: no wait for the gateway to pick it up
        assert ray.get(store().revoke_token.remote(admin_key(), "guarded", created.id))["revoked"]
        time.sleep(1.0)
        # new connections each, so the kernel spreads them over every gateway replica
        statuses = [
            requests.post(
                f"{cluster.url}/guarded/add", json={"a": 1}, headers={**good, "Connection": "close"}, timeout=30
            ).status_code
            for _ in range(20)
        ]
        assert statuses == [401] * 20
    finally:
        set_auth("guarded", False)


def write_gated(tmp_path: Path, answer: str, fail: bool, pinned: bool = True) -> Path:
    path = tmp_path / f"gated_{answer}.py"
    text = (APPS / "gated.py").read_text().replace('ANSWER = "v1"', f'ANSWER = "{answer}"')
    text = text.replace("FAIL = False", f"FAIL = {fail}")
    if not pinned:
        text = text.replace("@app.cls(min_containers=1, scaledown_window=60)", "@app.cls(scaledown_window=60)")
    path.write_text(text)
    return path


def test_a_version_that_cannot_start_never_replaces_the_live_one(cluster, tmp_path):
    out = cluster.cli("deploy", str(write_gated(tmp_path, "v1", fail=False)), "--json")
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    assert first["checked"] == ["Pinned"]
    assert cluster.post("/gated/Pinned/which").json() == "v1"
    out = cluster.cli("deploy", str(write_gated(tmp_path, "v2", fail=True)))
    assert out.returncode == 1
    assert "weights missing for v2" in out.stderr and f"v{first['version']} keeps serving" in out.stderr, out.stderr
    r = cluster.post("/gated/Pinned/which")
    assert r.json() == "v1" and r.headers["x-raygpu-version"] == str(first["version"])
    assert cluster.post("/gated/OnDemand/which").json() == "v1"
    status = json.loads(cluster.cli("status", "gated", "--json").stdout)
    assert status["version"] == first["version"]
    versions = ray_versions("gated")
    assert versions[-1]["status"] == "failed"

    # --check: functions that scale to zero are started once before the version goes live
    out = cluster.cli("deploy", str(write_gated(tmp_path, "v3", fail=True, pinned=False)), "--check")
    assert out.returncode == 1 and "tokenizer missing for v3" in out.stderr, out.stderr
    assert cluster.post("/gated/OnDemand/which").json() == "v1"
    out = cluster.cli("deploy", str(write_gated(tmp_path, "v4", fail=False, pinned=False)), "--check", "--json")
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["checked"]) == {"OnDemand", "Pinned"}
    assert cluster.post("/gated/OnDemand/which").json() == "v4"
    cluster.cli("stop", "gated")


def ray_versions(app: str) -> list[dict]:
    import ray

    from raygpu.sdk.control import store

    return ray.get(store().versions.remote(app))


def test_a_killed_store_keeps_what_it_acknowledged_and_the_gateway_follows_it(cluster):
    import os
    import signal

    import ray

    from raygpu.ops.tokens import create_token, set_auth
    from raygpu.sdk.control import store

    cluster.deploy(APPS / "guarded.py")
    created = create_token("guarded")
    good = {"Authorization": f"Bearer {created.token}"}
    before = ray.get(store().ping.remote())
    pid = next(
        a["Pid"]
        for a in ray._private.state.actors().values()
        if a["ActorClassName"] == "ControlPlaneStore" and a["State"] == "ALIVE"
    )
    os.kill(pid, signal.SIGKILL)  # Ray restarts the detached store from its SQLite file
    after = cluster.wait_for(lambda: _ping_or_none(), timeout=60, what="the store to restart")
    assert after["generation"] > before["generation"]  # never repeats: the gateway cannot mistake tables
    try:
        assert "guarded" in [a["name"] for a in ray.get(store().live_apps.remote())]
        assert cluster.post("/guarded/add", {"a": 1}, headers=good).json() == 2
        assert cluster.post("/guarded/add", {"a": 1}).status_code == 401
        cluster.wait_for(
            lambda: requests.get(f"{cluster.url}/healthz", timeout=5).json()["generation"] >= after["generation"],
            timeout=30,
            what="the gateway to follow the restarted store",
        )
    finally:
        set_auth("guarded", False)


def _ping_or_none():
    import ray

    from raygpu.sdk.control import store

    try:
        return ray.get(store().ping.remote(), timeout=5)
    except Exception:
        return None
