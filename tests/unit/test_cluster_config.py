"""cluster.yaml is a valid `ray up` config whose GPU pools scale from zero and carry accelerator labels."""

import yaml
from conftest import ROOT


def test_cluster_yaml_validates_and_gpu_pools_start_at_zero():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(dict(config)))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["GPU"] == 0
    pools = {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU")}
    assert pools and all(t["min_workers"] == 0 for t in pools.values())
    for pool in pools.values():
        labels = [k for k in pool["resources"] if k.startswith("accelerator_type:")]
        assert len(labels) == 1 and pool["resources"][labels[0]] == pool["resources"]["GPU"]
