"""`raygpu bill --nodes`: GPU-seconds of GPU nodes alive next to those billed to functions, the gap
split into provisioning, idle nodes and unused GPUs; node lifetimes kept by the ledger."""

import pytest

from billing.intervals import Interval
from billing.ledger import Ledger
from billing.node_bill import NodeLifetime, node_bill


def interval(replica, phase, start, end, gpus=1.0):
    return Interval(app="a", function="f", replica=replica, phase=phase, start=start, end=end, gpus=gpus)


def test_the_gap_between_the_node_and_its_replicas_is_split_by_cause():
    # a 2-GPU node alive 100 s .. 400 s; one 1-GPU replica from 130 s to 300 s
    node = NodeLifetime(node_id="n1", node_type="gpu_l4", accelerator="L4", gpus=2, started_at=100, ended_at=400)
    spans = [
        interval("r1", "cold_start", 130, 140),
        interval("r1", "active", 140, 280),
        interval("r1", "idle", 280, 300),
    ]
    out = node_bill([node], spans, {"r1": "n1"}, since=None, until=1000)
    (usage,) = out.nodes
    assert usage.alive_gpu_seconds == 600  # 2 GPUs x 300 s
    assert usage.billed_gpu_seconds == 170
    assert usage.provisioning_gpu_seconds == 60  # 2 GPUs x 30 s before the first replica
    assert usage.idle_node_gpu_seconds == 200  # 2 GPUs x 100 s after the last replica
    assert usage.unused_gpu_seconds == 170  # the second GPU while the replica ran
    assert out.alive_gpu_seconds == pytest.approx(
        out.billed_gpu_seconds + out.provisioning_gpu_seconds + out.idle_node_gpu_seconds + out.unused_gpu_seconds
    )


def test_a_window_clips_nodes_and_replicas_and_alive_nodes_run_until_now():
    node = NodeLifetime(node_id="n1", gpus=1, started_at=100)  # still alive
    out = node_bill([node], [interval("r1", "active", 150, 250)], {"r1": "n1"}, since=200, until=300)
    (usage,) = out.nodes
    assert usage.alive_gpu_seconds == 100 and usage.billed_gpu_seconds == 50
    assert usage.provisioning_gpu_seconds == 0 and usage.idle_node_gpu_seconds == 50


def test_cpu_nodes_are_left_out_and_replicas_on_unrecorded_nodes_are_reported_apart():
    cpu = NodeLifetime(node_id="c", gpus=0, started_at=0)
    never_used = NodeLifetime(node_id="n2", gpus=1, started_at=0, ended_at=60)
    out = node_bill([cpu, never_used], [interval("r9", "active", 0, 10)], {}, since=None, until=100)
    assert [u.node_id for u in out.nodes] == ["n2"]
    assert out.nodes[0].idle_node_gpu_seconds == 60 and out.billed_elsewhere_gpu_seconds == 10


def test_the_ledger_keeps_node_lifetimes_the_cluster_forgets(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    alive = {
        "node_id": "ab",
        "node_type": "fake_l4",
        "gpus": 1.0,
        "accelerator": "L4",
        "alive": True,
        "started_at": 10.0,
    }
    ledger.record_nodes([alive], now=20.0)
    ledger.record_nodes([alive], now=30.0)
    (row,) = ledger.nodes()
    assert (row["started_at"], row["last_seen"], row["ended_at"]) == (10.0, 30.0, None)
    ledger.record_nodes([{**alive, "alive": False, "ended_at": 35.0}], now=40.0)
    assert ledger.nodes()[0]["ended_at"] == 35.0
    # a node the cluster stopped listing ended when it was last seen
    other = {**alive, "node_id": "cd", "started_at": 50.0}
    ledger.record_nodes([other], now=60.0)
    ledger.record_nodes([], now=90.0)
    assert {r["node_id"]: r["ended_at"] for r in ledger.nodes()} == {"ab": 35.0, "cd": 60.0}
    assert [r["node_id"] for r in ledger.nodes(since=50.0)] == ["cd"]
    ledger.record_placements([{"replica": "r1", "node_id": "cd"}, {"replica": "r1", "node_id": "zz"}])
    assert ledger.placements() == {"r1": "cd"}
    # kept across a restart
    assert Ledger(tmp_path / "ledger.db").nodes()[1]["node_id"] == "cd"
