"""Serve options of a unit's deployment: queue bound, health checks, head-node exclusion, the
initial replica count of a new version."""

from deployments import constants
from deployments.replicas.application import deployment_options
from deployments.spec import FunctionSpec


def options(spec: FunctionSpec, **kwargs) -> dict:
    return deployment_options("shop", spec, "H100", "store", "ns", **kwargs)


def test_serve_queues_every_call_the_gateway_admits():
    spec = FunctionSpec(name="f", max_containers=3, max_inputs=4, max_queue=10)
    assert options(spec)["max_queued_requests"] == 3 * 4 + 10
    assert options(spec)["health_check_period_s"] == constants.REPLICA_HEALTH_CHECK_PERIOD_S


def test_user_replicas_ask_for_the_worker_resource_only_when_told():
    spec = FunctionSpec(name="f", gpu="H100")
    assert "resources" not in options(spec)["ray_actor_options"]
    actor = options(spec, worker_resource=constants.WORKER_RESOURCE)["ray_actor_options"]
    assert actor["resources"] == {constants.WORKER_RESOURCE: constants.WORKER_RESOURCE_SLIVER}
    assert actor["num_gpus"] == 1 and actor["accelerator_type"] == "H100"


def test_a_new_version_starts_with_the_replicas_it_is_given_within_its_bounds():
    spec = FunctionSpec(name="f", min_containers=1, max_containers=4)
    assert options(spec)["autoscaling_config"]["initial_replicas"] == 1
    assert options(spec, initial_replicas=3)["autoscaling_config"]["initial_replicas"] == 3
    assert options(spec, initial_replicas=9)["autoscaling_config"]["initial_replicas"] == 4
    assert options(spec, initial_replicas=0)["autoscaling_config"]["initial_replicas"] == 1
