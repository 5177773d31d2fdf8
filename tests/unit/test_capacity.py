"""Where a replica can run: live nodes and the autoscaler's node types (pools at zero included)."""

import pytest
import yaml
from conftest import ROOT

from raygpu.ops.capacity import (
    CapacityError,
    NodeType,
    ReplicaRequest,
    node_type_for,
    node_types_from_config,
    parse_fake_nodes,
    place,
)

HEAD = {"CPU": 16.0, "GPU": 8.0, "accelerator_type:H100": 8.0, "memory": 16 * 2**30}
A10G = NodeType(name="gpu_a10g", resources={"CPU": 4, "GPU": 1, "accelerator_type:A10G": 1}, max_workers=4)
H100 = NodeType(name="gpu_h100", resources={"CPU": 192, "GPU": 8, "accelerator_type:H100": 8}, max_workers=2)
NONE_LEFT = NodeType(name="gpu_l4", resources={"CPU": 4, "GPU": 1, "accelerator_type:L4": 1}, max_workers=0)


def test_a_pool_at_zero_nodes_is_a_place_to_run():
    request = ReplicaRequest(cpus=1, gpus=1, accelerators=("A10G",))
    placement = place(request, [HEAD], [A10G, H100])
    assert placement.accelerator == "A10G" and placement.node_type == "gpu_a10g"
    # a live node that holds it needs no launch
    assert place(ReplicaRequest(gpus=2, accelerators=("H100",)), [HEAD], [A10G]).node_type is None


def test_alternatives_are_tried_in_order_and_the_first_that_fits_wins():
    request = ReplicaRequest(gpus=1, accelerators=("L4", "A10G"))
    assert place(request, [HEAD], [NONE_LEFT, A10G]).accelerator == "A10G"
    assert place(ReplicaRequest(gpus=8, accelerators=("A10G", "H100")), [], [A10G, H100]).accelerator == "H100"


def test_what_nothing_can_hold_is_refused_with_every_node_type_and_what_it_offers():
    with pytest.raises(CapacityError) as refused:
        place(ReplicaRequest(gpus=1, accelerators=("A100",)), [HEAD], [A10G, H100, NONE_LEFT])
    message = str(refused.value)
    assert "1x A100" in message and "8x H100" in message
    assert "gpu_a10g (1x A10G, 4 CPU, up to 4 node(s))" in message and "gpu_h100 (8x H100" in message
    assert "gpu_l4" not in message  # max_workers 0: the autoscaler never launches it
    with pytest.raises(CapacityError):  # more GPUs than any node of the type has
        place(ReplicaRequest(gpus=2, accelerators=("A10G",)), [], [A10G])
    with pytest.raises(CapacityError):  # more CPUs than any node has
        place(ReplicaRequest(cpus=64, gpus=1, accelerators=("A10G",)), [HEAD], [A10G])
    with pytest.raises(CapacityError):  # more memory than the live node has
        place(ReplicaRequest(memory_bytes=64 * 2**30), [HEAD], [])


def test_the_head_is_not_a_place_when_replicas_must_stay_off_it():
    off_head = ReplicaRequest(gpus=1, accelerators=("H100",), custom=(("raygpu_worker", 0.001),))
    worker_h100 = H100.model_copy(update={"resources": {**H100.resources, "raygpu_worker": 1000}})
    assert place(off_head, [HEAD], [worker_h100]).node_type == "gpu_h100"
    with pytest.raises(CapacityError):
        place(off_head, [HEAD], [H100])


def test_undeclared_cpu_and_memory_of_a_node_type_are_filled_in_by_the_cloud():
    bare = NodeType(name="p5", resources={"GPU": 8, "accelerator_type:H100": 8}, max_workers=1)
    request = ReplicaRequest(cpus=8, gpus=1, accelerators=("H100",), memory_bytes=2**30)
    assert place(request, [], [bare]).node_type == "p5"


def test_a_waiting_replica_names_the_node_type_it_needs():
    wanted = ReplicaRequest(gpus=1, accelerators=("A10G",)).resources("A10G")
    assert node_type_for(wanted, [H100, A10G]) == "gpu_a10g"
    assert node_type_for(ReplicaRequest(gpus=1).resources("T4"), [H100, A10G]) is None


def test_the_shipped_cluster_yaml_offers_its_gpu_pools_to_deploys():
    types = {t.name: t for t in node_types_from_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))}
    assert "head" not in types
    off_head = (("raygpu_worker", 0.001),)
    assert place(ReplicaRequest(gpus=1, accelerators=("H100",), custom=off_head), [], types.values()).node_type
    assert place(ReplicaRequest(gpus=1, accelerators=("A10G",), custom=off_head), [], types.values()).node_type
    assert place(ReplicaRequest(cpus=2, custom=off_head), [], types.values()).node_type == "cpu_worker"


def test_fake_node_pools_parse_type_count_and_gpus():
    a10g, l4 = parse_fake_nodes("a10g:2, L4:1:2")
    assert (a10g.name, a10g.max_workers, a10g.resources["GPU"], a10g.accelerator) == ("fake_a10g", 2, 1, "A10G")
    assert (l4.max_workers, l4.resources["GPU"], l4.resources["accelerator_type:L4"]) == (1, 2, 2)
    for bad in ("", "A10G", "A10G:0", "A10G:x", "A10G:1:2:3", "nope:1", "A10G:1,A10G:2", "A10G:65"):
        with pytest.raises(ValueError):
            parse_fake_nodes(bad)
