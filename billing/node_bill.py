"""What the cloud charges next to what functions used: GPU-seconds of GPU nodes alive, the part
billed to functions (replicas on those nodes), and the gap, split into provisioning (a node alive
before its first replica started), idle nodes (after its last replica, until the autoscaler removed
it) and GPUs no replica used while others did. No Ray."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel

from billing.intervals import Interval


class NodeLifetime(BaseModel):
    """A node as the meter recorded it: registration, and its end (None while alive)."""

    node_id: str
    node_type: str = ""
    accelerator: str | None = None
    gpus: float = 0.0
    is_head: bool = False
    started_at: float
    ended_at: float | None = None


class NodeUsage(BaseModel):
    node_id: str
    node_type: str
    accelerator: str | None
    gpus: float
    is_head: bool
    started_at: float
    ended_at: float | None
    alive_gpu_seconds: float
    billed_gpu_seconds: float
    provisioning_gpu_seconds: float
    idle_node_gpu_seconds: float
    unused_gpu_seconds: float
    replicas: int


class NodeBill(BaseModel):
    since: float | None
    until: float
    nodes: list[NodeUsage]
    alive_gpu_seconds: float
    billed_gpu_seconds: float
    provisioning_gpu_seconds: float
    idle_node_gpu_seconds: float
    unused_gpu_seconds: float
    # GPU-seconds billed to replicas whose node the meter did not record (e.g. before it watched nodes)
    billed_elsewhere_gpu_seconds: float


def _clip(start: float, end: float, lo: float, hi: float) -> float:
    return max(0.0, min(end, hi) - max(start, lo))


def node_bill(
    nodes: Iterable[NodeLifetime],
    intervals: Iterable[Interval],
    placements: Mapping[str, str],
    *,
    since: float | None,
    until: float,
) -> NodeBill:
    """GPU nodes overlapping [since, until), each with the GPU-seconds its replicas were billed
    (`intervals`, every phase) and the gap split three ways. `placements`: replica -> node id."""
    lo = since if since is not None else float("-inf")
    by_node: dict[str, list[Interval]] = {}
    elsewhere = 0.0
    gpu_nodes = {n.node_id: n for n in nodes if n.gpus > 0}
    for iv in intervals:
        node = placements.get(iv.replica)
        if node in gpu_nodes:
            by_node.setdefault(node, []).append(iv)
        else:
            elsewhere += iv.gpus * _clip(iv.start, iv.end, lo, until)
    usages = []
    for node in gpu_nodes.values():
        end = node.ended_at if node.ended_at is not None else until
        alive = node.gpus * _clip(node.started_at, end, lo, until)
        if alive <= 0:
            continue
        spans = by_node.get(node.node_id, [])
        billed = sum(iv.gpus * _clip(iv.start, iv.end, lo, until) for iv in spans)
        if spans:
            first = min(iv.start for iv in spans)
            last = max(iv.end for iv in spans)
            provisioning = node.gpus * _clip(node.started_at, first, lo, until)
            idle_node = node.gpus * _clip(last, end, lo, until)
        else:  # a node no replica ever ran on: alive only until the autoscaler let it go
            provisioning, idle_node = 0.0, alive
        billed = min(billed, alive)
        idle_node = min(idle_node, alive - billed)
        provisioning = min(provisioning, alive - billed - idle_node)
        usages.append(
            NodeUsage(
                node_id=node.node_id,
                node_type=node.node_type,
                accelerator=node.accelerator,
                gpus=node.gpus,
                is_head=node.is_head,
                started_at=node.started_at,
                ended_at=node.ended_at,
                alive_gpu_seconds=alive,
                billed_gpu_seconds=billed,
                provisioning_gpu_seconds=provisioning,
                idle_node_gpu_seconds=idle_node,
                unused_gpu_seconds=max(alive - billed - provisioning - idle_node, 0.0),
                replicas=len({iv.replica for iv in spans}),
            )
        )
    usages.sort(key=lambda u: u.started_at)
    return NodeBill(
        since=since,
        until=until,
        nodes=usages,
        alive_gpu_seconds=sum(u.alive_gpu_seconds for u in usages),
        billed_gpu_seconds=sum(u.billed_gpu_seconds for u in usages),
        provisioning_gpu_seconds=sum(u.provisioning_gpu_seconds for u in usages),
        idle_node_gpu_seconds=sum(u.idle_node_gpu_seconds for u in usages),
        unused_gpu_seconds=sum(u.unused_gpu_seconds for u in usages),
        billed_elsewhere_gpu_seconds=elsewhere,
    )
