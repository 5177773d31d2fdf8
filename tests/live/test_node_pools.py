"""GPU node pools that scale from zero, on the test cluster's fake nodes (Ray's fake multi-node
autoscaler, `raygpu up --local --fake-nodes A10G:2,L4:1:2`): deploy against node types, a node
launched by the first call, its provision phase, its warm pool, its removal and its bill."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import APPS

pytestmark = pytest.mark.slow


def nodes_of_type(node_type: str, alive: bool = True) -> list:
    from billing.node_inventory import list_nodes

    return [n for n in list_nodes() if n.node_type == node_type and n.alive == alive]


def node_type_of(node_id: str) -> str:
    from billing.node_inventory import list_nodes

    return next(n.node_type for n in list_nodes() if n.node_id == node_id)


def function_status(cluster, name: str):
    return next(f for f in cluster.status("pools").functions if f.name == name)


def wait_until_no_node(cluster, node_type: str) -> None:
    # a node is removed after the autoscaler's idle timeout once its replicas (and warm pool) left
    cluster.wait_for(lambda: not nodes_of_type(node_type), timeout=180, what=f"no {node_type} node alive")


@pytest.fixture(scope="module", autouse=True)
def no_fake_node_left(cluster):
    """The modules after this one run without fake nodes (each is a raylet and its agents)."""
    yield
    for node_type in ("fake_a10g", "fake_l4"):
        wait_until_no_node(cluster, node_type)


@pytest.fixture(scope="module")
def pools(cluster):
    cluster.deploy(APPS / "pools.py")
    yield cluster
    cluster.cli("stop", "pools")


def test_a_call_at_zero_launches_a_node_and_the_node_goes_when_idle(pools):
    cluster = pools
    wait_until_no_node(cluster, "fake_a10g")  # deploy launched nothing
    answers = {}
    caller = threading.Thread(target=lambda: answers.update(r=cluster.post("/pools/on_a10g", {"x": 7}, timeout=300)))
    caller.start()
    waiting = cluster.wait_for(
        lambda: function_status(cluster, "on_a10g").waiting_for_node, timeout=60, what="a replica waiting for a node"
    )
    assert waiting == "fake_a10g"
    caller.join(300)
    response = answers["r"]
    assert response.status_code == 200, response.text
    node_id = response.json()["node_id"]
    assert node_type_of(node_id) == "fake_a10g"  # not the head

    out = cluster.cli("status", "pools", "--json")
    assert out.returncode == 0, out.stderr
    on_a10g = next(f for f in json.loads(out.stdout)["functions"] if f["name"] == "on_a10g")
    assert "waiting_for_node" in on_a10g

    def phases():
        latest = function_status(cluster, "on_a10g").last_start_phases
        return latest if "provision" in latest and "first_response" in latest else None

    latest = cluster.wait_for(phases, timeout=60, what="the start's phases, provision included")
    assert latest["provision"] > 0 and latest["scheduling"] >= 0
    assert list(latest)[:3] == ["detection", "provision", "scheduling"]

    cluster.wait_for(
        lambda: function_status(cluster, "on_a10g").replicas.running == 0, timeout=60, what="scale to zero"
    )
    wait_until_no_node(cluster, "fake_a10g")

    def the_node_as_billed():
        bill = cluster.cli("bill", "--nodes", "--json")
        assert bill.returncode == 0, bill.stderr
        node = next(n for n in json.loads(bill.stdout)["nodes"] if n["node_id"] == node_id)
        return node if node["ended_at"] is not None else None

    node = cluster.wait_for(the_node_as_billed, timeout=30, what="the node's end in the ledger")
    assert node["replicas"] >= 1
    assert node["billed_gpu_seconds"] > 0 and node["idle_node_gpu_seconds"] > 0
    assert node["alive_gpu_seconds"] == pytest.approx(
        node["billed_gpu_seconds"]
        + node["provisioning_gpu_seconds"]
        + node["idle_node_gpu_seconds"]
        + node["unused_gpu_seconds"]
    )
    text = cluster.cli("bill", "--nodes").stdout
    assert "fake_a10g" in text and "provisioning" in text


def test_weights_deleted_from_the_deployers_disk_still_load_on_a_new_node(cluster, tmp_path):
    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "scaler.safetensors"
    save_file({"weight": torch.full((1, 4), 5.0)}, str(weights))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYGPU_TEST_POOLED_WEIGHTS", str(weights))
        cluster.deploy(APPS / "pooled_model.py")
    try:
        weights.unlink()  # only the cluster's copy is left
        wait_until_no_node(cluster, "fake_a10g")  # the replica needs a node launched after the deploy
        response = cluster.post("/pooledmodel/scaler", {"inputs": [[1.0, 1.0, 1.0, 1.0]]}, timeout=300)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"] == [[20.0]]
        listed = json.loads(cluster.cli("weights", "ls", "pooledmodel/scaler", "--json").stdout)
        assert listed["default"]["path"].startswith("raygpu-blob://")
        # the node's weight cache and warm pool leave with its last replica: the idle node goes
        # (the module's end waits for it, while the tests after this one run)
    finally:
        cluster.cli("stop", "pooledmodel")


def test_functions_land_on_the_node_type_of_their_accelerator(pools):
    cluster = pools
    with ThreadPoolExecutor(2) as pool:
        a10g, l4 = pool.map(lambda fn: cluster.post(f"/pools/{fn}", {}, timeout=300), ["on_a10g", "on_l4"])
    assert a10g.status_code == 200 and l4.status_code == 200
    assert node_type_of(a10g.json()["node_id"]) == "fake_a10g"
    assert node_type_of(l4.json()["node_id"]) == "fake_l4"


def test_an_accelerator_no_node_type_offers_is_refused_with_the_node_types(cluster):
    out = cluster.cli("deploy", str(APPS / "wrong_gpu.py"))
    assert out.returncode != 0
    assert "A100" in out.stderr and "fake_a10g (1x A10G" in out.stderr and "fake_l4 (2x L4" in out.stderr
    assert cluster.cli("status", "wronggpu").returncode != 0  # nothing was recorded as deployed


def test_a_node_that_joined_later_gets_a_warm_pool_that_its_next_replica_uses(pools):
    cluster = pools
    first = cluster.post("/pools/l4_slow", {}, timeout=300)
    assert first.status_code == 200, first.text
    node_id = first.json()["node_id"]

    def idle_on_that_node():
        out = cluster.cli("pool", "--json")
        entry = next((p for p in json.loads(out.stdout) if p["node_id"] == node_id), None)
        return entry and not entry["head"] and {w["pid"] for w in entry["idle"]}

    warm = cluster.wait_for(idle_on_that_node, timeout=90, what="a warm pool on the launched node")
    # more calls than one replica takes: a second replica starts on the same node (it has 2 GPUs)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: cluster.post("/pools/l4_slow", {"seconds": 6}, timeout=300), range(3)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    pids = {a.json()["pid"] for a in answers}
    assert first.json()["pid"] in pids and len(pids) == 2, pids
    assert pids & warm, f"the second replica ({pids}) did not take a warm worker ({warm})"
    assert {a.json()["node_id"] for a in answers} == {node_id}
