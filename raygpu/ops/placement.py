"""Where a function's replicas can run: the resources one replica asks for, the accelerator type
the cluster will give it (a live node's, or one a node type of the autoscaler can launch), and the
resource that keeps user replicas off the head node of a multi-node cluster."""

from __future__ import annotations

import ray

from deployments import constants
from deployments.spec import FunctionSpec
from raygpu.ops.capacity import CapacityError, NodeType, ReplicaRequest, place
from raygpu.sdk.control import store
from raygpu.sdk.errors import DeployError


def live_node_resources() -> list[dict[str, float]]:
    """Total resources of every alive node."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def cluster_node_types() -> list[NodeType]:
    """The node types the cluster's autoscaler can launch, as `raygpu up` recorded them."""
    raw = ray.get(store().get_setting.remote("node_types", [])) or []
    return [NodeType.model_validate(t) for t in raw]


def replica_request(spec: FunctionSpec, off_head: str | None) -> ReplicaRequest:
    """The resources one replica of `spec` asks Ray for (see deployment_options)."""
    request = spec.gpu_request
    return ReplicaRequest(
        cpus=spec.cpu,
        gpus=request.count if request else 0,
        accelerators=tuple(request.types or ()) if request else (),
        memory_bytes=spec.memory * 1024 * 1024 if spec.memory else None,
        custom=((off_head, constants.WORKER_RESOURCE_SLIVER),) if off_head else (),
    )


def resolve_accelerator(app: str, spec: FunctionSpec, off_head: str | None = None) -> str | None:
    """The accelerator type this cluster will run `spec` on: one a live node has, else one a node
    type of the autoscaler can launch (a GPU pool at zero nodes). Refuse what neither can hold."""
    try:
        placement = place(replica_request(spec, off_head), live_node_resources(), cluster_node_types())
    except CapacityError as exc:
        raise DeployError(
            f"{app}/{spec.name} {exc}. Ask for what a node type offers, add a node type to cluster.yaml, or "
            "locally start `raygpu up --local --gpus N --accelerator TYPE` (or `--fake-nodes TYPE:N`)"
        ) from None
    return placement.accelerator if spec.gpu_request and spec.gpu_request.types else None


def worker_resource() -> str | None:
    """The resource that keeps user replicas off the head node: asked for when the cluster has
    non-head nodes that declare it, or was installed as a multi-node cluster."""
    if ray.cluster_resources().get(constants.WORKER_RESOURCE):
        return constants.WORKER_RESOURCE
    if ray.get(store().get_setting.remote("replicas_off_head", False)):
        return constants.WORKER_RESOURCE
    return None
