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


def test_the_cluster_reaches_every_node_without_the_package_index_and_the_head_gets_no_cuda():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert config["file_mounts"]["~/raygpu"] == "."  # this checkout, not a package index name
    everything = yaml.safe_dump(config)
    assert "pip install raygpu" not in everything and '"raygpu[' not in everything
    head_setup = " ".join(config["head_setup_commands"])
    assert "~/raygpu" in head_setup and "[gpu]" not in head_setup and "torch" not in head_setup
    for name, node_type in config["available_node_types"].items():
        if node_type["resources"].get("GPU"):
            assert any("[gpu]" in c for c in node_type["worker_setup_commands"]), name
    start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start and "--dashboard-host=127.0.0.1" in start
    assert "raygpu up --address auto --state-dir" in start
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"])
    (rule,) = config["provider"]["security_group"]["IpPermissions"]
    assert rule["FromPort"] == rule["ToPort"] == 8000  # only the gateway is public


def test_the_control_plane_imports_no_torch():
    # the CPU head installs raygpu without the torch extras
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import raygpu.cli, raygpu.controlplane.control_plane, raygpu.controlplane.control_driver, raygpu.ops.deploy\n"
        "import deployments.gateway.server, billing.meter, deployments.store.actor, deployments.node.warm_pool\n"
        "assert 'torch' not in sys.modules and 'vllm' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
