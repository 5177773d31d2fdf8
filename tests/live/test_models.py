"""PyTorch model deployments, live: batching, multiplexing with an LRU, live weight updates and the
node weight cache, through the real gateway."""

import threading
import time

import pytest
import requests
from conftest import APPS

MODEL_HEADER = "x-raygpu-model"
ONES = {"inputs": [[1.0, 1.0, 1.0, 1.0]]}


def write_weights(path, value: float) -> None:
    import torch

    state = {"weight": torch.full((1, 4), value)}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.fixture(scope="module")
def models_app(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    for name, value in (("a.safetensors", 1.0), ("b.pt", 2.0), ("c.safetensors", 3.0), ("cached.safetensors", 1.0)):
        write_weights(folder / name, value)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYGPU_TEST_WEIGHTS", str(folder))  # read by the app file when it is loaded
        cluster.deploy(APPS / "models.py")
        yield folder
    cluster.cli("stop", "models")


def stats(function: str) -> dict:
    from ray import serve

    from raygpu.ops.deploy import live_serve_app

    handle = serve.get_deployment_handle(function, app_name=live_serve_app("models"))
    try:
        return handle.model_stats.remote().result(timeout_s=30)
    finally:
        handle.shutdown()  # no router left pushing metrics after the session's cluster is gone


def infer(cluster, model: str | None = None, body=ONES, function: str = "scaler") -> requests.Response:
    headers = {MODEL_HEADER: model} if model else {}
    return cluster.post(f"/models/{function}", body, headers=headers)


def test_each_model_answers_and_the_lru_evicts_and_reloads(cluster, models_app):
    expected = {"a": 4.0, "b": 8.0, "c": 12.0}
    for model in ("a", "b", "c", "a"):
        response = infer(cluster, model)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["outputs"] == [[expected[model]]] and body["model"] == model and body["weights_version"] == 1
        assert response.headers[MODEL_HEADER] == model and response.headers["x-raygpu-weights-version"] == "1"
    assert infer(cluster).json()["model"] == "a"  # no header: the first model
    s = stats("scaler")
    assert s["loads"] == {"a": 2, "b": 1, "c": 1} and s["evictions"] == {"a": 1, "b": 1}
    assert s["loaded"] == ["c", "a"]


def test_bad_model_requests_get_clear_errors(cluster, models_app):
    response = infer(cluster, "zzz")
    assert response.status_code == 404 and "models: a, b, c" in response.json()["error"]["message"]
    response = infer(cluster, "a", {"inputs": []})
    assert response.status_code == 422 and '{"inputs": [item, ...]}' in response.json()["error"]["message"]
    response = infer(cluster, "a", {"inputs": [[1.0, 2.0]]})  # wrong width for a Linear(4, 1)
    assert response.status_code == 422 and response.json()["error"]["type"] == "InvalidInput"
    assert infer(cluster, "a").status_code == 200  # the replica still serves


def test_concurrent_requests_form_batches(cluster, models_app):
    before = stats("scaler")["batch_sizes"]
    results = []

    def call():
        results.append(infer(cluster, "a").json()["outputs"])

    threads = [threading.Thread(target=call) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[[4.0]]] * 24
    after = stats("scaler")["batch_sizes"]
    grown = {int(size): n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert sum(size * n for size, n in grown.items()) >= 24 and max(grown) > 1, grown


def test_a_bad_item_fails_only_its_own_caller_in_a_shared_batch(cluster, models_app):
    bodies = [ONES] * 6 + [{"inputs": [[1.0, 2.0, 3.0]]}, {"inputs": ["text"]}]  # ragged, wrong type
    answers: dict[int, requests.Response] = {}

    def call(i: int) -> None:
        answers[i] = infer(cluster, "a", bodies[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [answers[i].status_code for i in range(6)] == [200] * 6
    assert all(answers[i].json()["outputs"] == [[4.0]] for i in range(6))
    for i in (6, 7):
        assert answers[i].status_code == 422 and answers[i].json()["error"]["type"] == "InvalidInput"
    assert "batch_retries" in stats("scaler")  # batches the bad items shared were rerun item by item


def test_live_weight_update_switches_version_once_without_failures(cluster, models_app):
    new_file = models_app / "a-v2.safetensors"
    write_weights(new_file, 10.0)
    seen: dict[int, list[tuple[int, float, int]]] = {i: [] for i in range(4)}
    stop = threading.Event()

    def client(index: int):
        session = requests.Session()
        while not stop.is_set():
            r = session.post(f"{cluster.url}/models/scaler", json=ONES, headers={MODEL_HEADER: "a"}, timeout=60)
            body = r.json() if r.status_code == 200 else {}
            seen[index].append((r.status_code, body.get("outputs", [[None]])[0][0], body.get("weights_version")))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    out = cluster.cli("weights", "push", "models/scaler", str(new_file), "--model", "a", "--json")
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads(out.stdout)["version"] == 2

    def switched():
        return all(calls and calls[-1][2] == 2 for calls in seen.values())

    try:
        cluster.wait_for(switched, timeout=60, what="every client to see weights v2")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    for calls in seen.values():
        assert all(status == 200 for status, _, _ in calls)
        versions = [v for _, _, v in calls]
        assert versions == sorted(versions) and set(versions) == {1, 2}  # one switch, never back
        assert all((v, out) in ((1, 4.0), (2, 40.0)) for _, out, v in calls)
    listed = json.loads(cluster.cli("weights", "ls", "models/scaler", "--json").stdout)
    assert listed["a"]["version"] == 2 and listed["a"]["source"] == "push" and listed["b"]["version"] == 1
    bad = cluster.cli("weights", "push", "models/scaler", str(new_file), "--model", "zzz")
    assert bad.returncode == 1 and "has no model 'zzz'" in bad.stderr
    bad = cluster.cli("weights", "push", "models/scaler", str(models_app / "missing.safetensors"))
    assert bad.returncode == 1 and "not found" in bad.stderr
    # weights that do not fit the model are refused before they go live
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.ones(2, 4)}, str(models_app / "wide.safetensors"))
    bad = cluster.cli("weights", "push", "models/scaler", str(models_app / "wide.safetensors"), "--model", "a")
    assert bad.returncode == 1 and "shape [2, 4], the model's is [1, 4]" in bad.stderr, bad.stderr
    (models_app / "junk.safetensors").write_bytes(b"not weights at all")
    bad = cluster.cli("weights", "push", "models/scaler", str(models_app / "junk.safetensors"), "--model", "a")
    assert bad.returncode == 1 and "not a readable weights file" in bad.stderr
    assert infer(cluster, "a").json()["outputs"] == [[40.0]]  # v2 keeps serving
    # a plain redeploy (naming the same files as before) keeps the pushed weights
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYGPU_TEST_WEIGHTS", str(models_app))
        cluster.deploy(APPS / "models.py")
    listed = json.loads(cluster.cli("weights", "ls", "models/scaler", "--json").stdout)
    assert listed["a"]["version"] == 2 and listed["a"]["source"] == "push"
    assert infer(cluster, "a").json()["outputs"] == [[40.0]]


def test_a_second_replica_starts_from_the_node_cache_without_the_file(cluster, models_app):
    import ray

    from deployments.node.weight_cache import node_weight_cache

    assert infer(cluster, function="cached").json()["outputs"] == [[4.0]]
    from deployments.weights_location import blob_name
    from raygpu.ops.deploy import live_serve_app

    first_pid = stats("cached")["pid"]
    stored_as = blob_name(models_app / "cached.safetensors")  # deploy uploaded it by content
    (models_app / "cached.safetensors").rename(models_app / "cached.hidden")  # the file is gone
    (replica,) = [
        a
        for a in ray._private.state.actors().values()
        if a["ActorClassName"] == f"ServeReplica:{live_serve_app('models')}:cached" and a["State"] == "ALIVE"
    ]
    ray.kill(ray.get_actor(replica["Name"], namespace="serve"), no_restart=True)

    def answered_by_a_new_replica():
        response = infer(cluster, function="cached")
        return response.status_code == 200 and stats("cached")["pid"] != first_pid and response

    response = cluster.wait_for(answered_by_a_new_replica, timeout=120, interval=1.0, what="a replacement replica")
    assert response.json()["outputs"] == [[4.0]]
    cache = ray.get(node_weight_cache().stats.remote())
    (entry,) = [e for key, e in cache["entries"].items() if stored_as in key]
    assert entry["hits"] >= 1 and entry["bytes"] == 16


def test_replica_starts_are_broken_into_phases(cluster, models_app):
    import json

    def reported_phases():
        out = cluster.cli("status", "models", "--json")
        assert out.returncode == 0, out.stderr
        (scaler,) = [f for f in json.loads(out.stdout)["functions"] if f["name"] == "scaler"]
        return "first_response" in scaler["last_start_phases"] and scaler["last_start_phases"]

    phases = cluster.wait_for(reported_phases, timeout=30, what="start phases in raygpu status")
    assert [p for p in phases if p not in ("detection", "scheduling")] == [
        "process",
        "imports",
        "weights",
        "engine_init",
        "ready",
        "first_response",
    ]
    # Loading weights and answering take time on every start; the whole start stays within the test's wait.
    assert phases["weights"] > 0 and phases["first_response"] > 0 and sum(phases.values()) < 120
    text = cluster.cli("status", "models").stdout
    assert "last start of scaler" in text and "weights" in text
    exported = requests.get(f"http://127.0.0.1:{_metrics_port()}/metrics", timeout=10).text
    assert 'raygpu_cold_start_phase_seconds_count{app="models",function="scaler",phase="weights"}' in exported


def _metrics_port() -> int:
    from raygpu.sdk.home import read_local_cluster

    return read_local_cluster().metrics_port
