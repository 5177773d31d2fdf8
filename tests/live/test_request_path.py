"""The request path over real HTTP: results, every error status, and what never wakes a replica."""

import json
import threading
import time

import pytest
import requests
from conftest import APPS


@pytest.fixture(scope="module")
def basic(cluster):
    result = cluster.deploy(APPS / "basic.py")
    assert result["app"] == "basic"
    return cluster


def replicas_of(cluster, app, fn):
    status = cluster.status(app)
    f = next(f for f in status.functions if f.name == fn)
    return f.replicas.running + f.replicas.starting


def test_call_returns_result(basic):
    r = basic.post("/basic/add", {"a": 2, "b": 40})
    assert r.status_code == 200 and r.json() == 42
    assert r.headers["x-raygpu-version"] == str(basic.status("basic").version)
    assert basic.post("/basic/norm", {"p": {"x": 3, "y": 4}, "scale": 2}).json() == 10.0


def test_class_methods_keep_state_from_enter(basic):
    first = basic.post("/basic/Counter/incr", {"by": 5}).json()
    assert first >= 105
    assert basic.post("/basic/Counter/incr", {}).json() == first + 1


def test_healthz_and_docs(basic):
    health = requests.get(f"{basic.url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["apps"] >= 1
    doc = requests.get(f"{basic.url}/basic/docs", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    add = doc["paths"]["/basic/add"]["post"]
    schema = add["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["a"] and schema["properties"]["a"]["type"] == "integer"
    assert add["summary"] == "Add two integers."
    assert "/basic/Counter/incr" in doc["paths"]
    norm_schema = doc["paths"]["/basic/norm"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "Point" in json.dumps(norm_schema)


def test_400_malformed_json(basic):
    r = requests.post(f"{basic.url}/basic/cold", data=b"{not json", timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "MalformedJSON" and "not valid JSON" in r.json()["error"]["message"]


def test_404_unknown_app_function_method(basic):
    r = basic.post("/nope/add", {})  # as a protected app answers a caller without a token: 401
    assert r.status_code == 401 and "app 'nope' is not deployed, or it needs" in r.json()["error"]["message"]
    r = basic.post("/basic/nope", {})
    assert r.status_code == 404 and "no function or class 'nope'" in r.json()["error"]["message"]
    assert "add" in r.json()["error"]["message"]
    r = basic.post("/basic/Counter/nope", {})
    assert r.status_code == 404 and "no method 'nope'" in r.json()["error"]["message"]
    r = basic.post("/basic/cold/extra", {})
    assert r.status_code == 404


def test_405_wrong_method(basic):
    r = requests.get(f"{basic.url}/basic/cold", timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


def test_413_body_too_large(basic):
    from deployments.constants import MAX_BODY_BYTES

    r = requests.post(f"{basic.url}/basic/cold", data=b"x" * (MAX_BODY_BYTES + 1), timeout=60)
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.json()["error"]["message"]


def test_422_lists_bad_fields(basic):
    r = basic.post("/basic/add", {"a": "not a number", "c": 1})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["type"] == "ValidationError"
    assert {d["field"] for d in error["details"]} == {"a", "c"}
    r = basic.post("/basic/add", [1, 2])  # the gateway refuses a body that is not a JSON object
    assert r.status_code == 400 and r.json()["error"]["type"] == "WrongBodyType"
    assert "JSON object" in r.json()["error"]["message"]


def test_500_user_exception(basic):
    r = basic.post("/basic/fail", {"message": "boom"})
    assert r.status_code == 500
    assert r.json()["error"] == {"type": "ValueError", "message": "boom"}


@pytest.mark.parametrize("route", ["/basic/slow", "/basic/slow_async"])
def test_504_timeout(basic, route):
    assert basic.post(route, {"seconds": 0}).status_code == 200  # a replica is up: time the timeout alone
    started = time.monotonic()
    r = basic.post(route, {"seconds": 5})
    assert r.status_code == 504
    assert "timeout of 1 s" in r.json()["error"]["message"]
    assert time.monotonic() - started < 4.5  # answered at the timeout, not when the call ends


def test_503_queue_full_with_retry_after(basic):
    basic.post("/basic/busy", {"seconds": 0})  # warm the single replica
    results: list[requests.Response] = []

    def call():
        results.append(basic.post("/basic/busy", {"seconds": 3}))

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
    rejected = next(r for r in results if r.status_code == 503)
    assert rejected.headers["Retry-After"] == "1"
    assert rejected.json()["error"]["type"] == "QueueFull" and "max_queue" in rejected.json()["error"]["message"]


def test_gateway_errors_never_wake_a_replica(basic):
    import ray

    from raygpu.sdk.control import store

    assert replicas_of(basic, "basic", "cold") == 0
    before = len(ray.get(store().arrivals.remote("basic", "cold")))
    assert requests.post(f"{basic.url}/basic/cold", data=b"{oops", timeout=10).status_code == 400
    assert basic.post("/basic/cold/x", {}).status_code == 404
    big = requests.post(f"{basic.url}/basic/cold", data=b"x" * (17 * 1024 * 1024), timeout=60)
    assert big.status_code == 413
    # a call the gateway answers itself records no arrival, so the autoscaler has nothing to start a
    # replica for; a later call of another function, once recorded, shows the gateway's earlier
    # arrivals were shipped (one buffer, in order)
    added = len(ray.get(store().arrivals.remote("basic", "add")))
    assert basic.post("/basic/add", {"a": 1}).status_code == 200
    basic.wait_for(
        lambda: len(ray.get(store().arrivals.remote("basic", "add"))) > added, timeout=30, what="the marker arrival"
    )
    assert len(ray.get(store().arrivals.remote("basic", "cold"))) == before
    assert replicas_of(basic, "basic", "cold") == 0


def test_gpu_function_holds_a_logical_gpu(basic):
    r = basic.post("/basic/gpu_ids", {})
    assert r.status_code == 200 and len(r.json()) == 1
    status = basic.status("basic")
    assert next(f for f in status.functions if f.name == "gpu_ids").accelerator == "H100"


def test_a_call_whose_replica_died_is_resent_to_a_replacement(basic, tmp_path):
    marker = str(tmp_path / "crashed")
    r = basic.post("/basic/crash_once", {"marker": marker})
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_a_call_that_kills_every_replica_it_reaches_is_replica_lost_once_resends_run_out(basic):
    r = basic.post("/basic/crash_always", {})
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert (
        r.json()["error"]["type"] == "ReplicaLost" and "raygpu logs basic/crash_always" in r.json()["error"]["message"]
    )


def test_scale_to_zero_then_call_at_zero(basic):
    assert basic.post("/basic/add", {"a": 1}).json() == 2
    basic.wait_for(lambda: replicas_of(basic, "basic", "add") == 0, timeout=60, what="add to scale to zero")

    def gone():  # the stopped replica leaves Serve's "stopping" a moment after it stops counting
        f = next(f for f in basic.status("basic").functions if f.name == "add")
        return f.replicas.stopping == 0

    basic.wait_for(gone, timeout=60, what="add's last replica to be gone")
    status = basic.cli("status", "basic", "--json")
    assert status.returncode == 0, status.stderr
    add = next(f for f in json.loads(status.stdout)["functions"] if f["name"] == "add")
    assert add["replicas"] == {"running": 0, "starting": 0, "stopping": 0}
    assert add["last_scale_event"]["to"] == 0
    r = basic.post("/basic/add", {"a": 5, "b": 5})
    assert r.status_code == 200 and r.json() == 10


def test_lookup_and_cli_call(basic):
    import raygpu

    assert raygpu.lookup("basic", "add").remote(a=1, b=2) == 3
    assert raygpu.lookup("basic", "Counter").incr.remote(by=0) >= 100
    with pytest.raises(raygpu.RemoteCallError) as info:
        raygpu.lookup("basic", "fail").remote(message="bad")
    assert info.value.status == 500 and "bad" in str(info.value)
    with pytest.raises(raygpu.NotFoundError, match="not deployed"):
        raygpu.lookup("missing", "add")
    out = basic.cli("call", "basic/add", "--data", '{"a": 20, "b": 22}')
    assert out.returncode == 0 and out.stdout.strip() == "42"
    out = basic.cli("call", "basic/add", "--data", '{"a": "x"}')
    assert out.returncode == 1 and "HTTP 422" in out.stderr


def test_enter_hook_failure_answers_with_the_reason_instead_of_hanging(basic):
    started = time.monotonic()
    r = basic.post("/basic/BrokenEnter/predict", {})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "StartupError"
    assert "FileNotFoundError: weights.bin is missing" in error["message"] and "raygpu logs" in error["message"]
    assert time.monotonic() - started < 60
