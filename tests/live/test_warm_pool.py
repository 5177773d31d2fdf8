"""The warm worker pool: replicas start in pre-started processes with torch already imported."""

import json

import pytest
from conftest import APPS


def test_the_ray_internals_the_pool_relies_on_are_still_there():
    # Fails loudly when the pinned Ray changes under the pool: PrestartWorkers, the worker
    # preload setting, runtime env info and idle worker titles are Ray internals.
    import ray
    from ray._private.utils import get_runtime_env_info
    from ray._private.workers import default_worker
    from ray.runtime_env import RuntimeEnv

    from deployments.node.warm_pool import WARM_ENV_VAR, flavour_runtime_env, internals_available

    assert ray.__version__ == "2.60.0", "raygpu pins Ray 2.60.0; re-check deployments/node/warm_pool.py before moving"
    assert internals_available() == (True, "")
    # the runtime env info the pool's prestart request carries, built the way the pool builds it
    info = get_runtime_env_info(RuntimeEnv(**flavour_runtime_env("torch")), is_job_runtime_env=False, serialize=False)
    assert WARM_ENV_VAR in info.serialized_runtime_env
    assert "worker_preload_modules" in open(default_worker.__file__).read().replace("-", "_")


def pool(cluster) -> dict:
    out = cluster.cli("pool", "--json")
    assert out.returncode == 0, out.stderr
    (node,) = [p for p in json.loads(out.stdout) if p["head"]]
    return node


@pytest.mark.slow
def test_after_scale_to_zero_the_next_replica_takes_a_pool_worker(cluster):
    cluster.deploy(APPS / "warm.py")
    assert cluster.post("/warm/whoami", {}).status_code == 200
    cluster.wait_for(
        lambda: cluster.status("warm").functions[0].replicas.running == 0, timeout=60, what="scale to zero"
    )
    idle = cluster.wait_for(lambda: pool(cluster)["idle"], timeout=60, what="an idle warm worker")
    assert all(w["rss_bytes"] > 100 * 2**20 for w in idle)  # torch is imported: a few hundred MB each
    pids = {w["pid"] for w in idle}
    response = cluster.post("/warm/whoami", {})
    assert response.status_code == 200 and response.json() in pids
    import ray

    from billing.constants import METER_ACTOR_NAME, METER_NAMESPACE

    meter = ray.get_actor(METER_ACTOR_NAME, namespace=METER_NAMESPACE)
    pid = response.json()

    def phases_of_that_replica():
        starts = ray.get(meter.replica_start_phases.remote("warm", "whoami"))
        return next((p for r, p in starts.items() if r.startswith(f"{pid}-") and "first_response" in p), None)

    phases = cluster.wait_for(phases_of_that_replica, timeout=30, what="the replica's start phases")
    assert phases["process"] == 0.0  # the pool's idle time is not part of the replica's start (nor billed)
    # the call at zero → the autoscaler's decision → the replica on its worker
    assert 0 <= phases["detection"] < 5 and 0 <= phases["scheduling"] < 5, phases
    text = cluster.cli("pool").stdout
    assert "MiB" in text
    cluster.cli("stop", "warm")
