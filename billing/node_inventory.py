"""The cluster's nodes as the GCS knows them: id, node type, resources, when each registered and,
for dead ones, when it ended. The meter records these lifetimes itself (the GCS forgets dead nodes
after a while); replicas read their own node's registration to time a node launch."""

from __future__ import annotations

from typing import Any

import ray
from pydantic import BaseModel

ACCELERATOR_PREFIX = "accelerator_type:"


class NodeInfo(BaseModel):
    node_id: str
    alive: bool
    is_head: bool
    node_type: str = ""
    resources: dict[str, float] = {}
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def gpus(self) -> float:
        return self.resources.get("GPU", 0.0)

    @property
    def accelerator(self) -> str | None:
        return next(
            (k.removeprefix(ACCELERATOR_PREFIX) for k in self.resources if k.startswith(ACCELERATOR_PREFIX)), None
        )


def _from_gcs_info(info: Any) -> dict[str, Any]:
    return {
        "node_type": getattr(info, "node_type_name", "") or "",
        "started_at": (info.start_time_ms / 1000.0) if getattr(info, "start_time_ms", 0) else None,
        "ended_at": (info.end_time_ms / 1000.0) if getattr(info, "end_time_ms", 0) else None,
    }


def list_nodes() -> list[NodeInfo]:
    """Every node the GCS still knows, alive or dead. Registration times come from the GCS's own
    node table (an internal client; without it, nodes are listed with unknown times)."""
    extra: dict[str, dict[str, Any]] = {}
    try:
        infos = ray._private.worker.global_worker.gcs_client.get_all_node_info(timeout=10)
        for node_id, info in infos.items():
            extra[node_id.hex() if hasattr(node_id, "hex") else str(node_id)] = _from_gcs_info(info)
    except Exception:
        pass
    out = []
    for node in ray.nodes():
        resources = {k: float(v) for k, v in (node.get("Resources") or {}).items() if not k.startswith("node:")}
        out.append(
            NodeInfo(
                node_id=node["NodeID"],
                alive=bool(node.get("Alive")),
                is_head="node:__internal_head__" in (node.get("Resources") or {}),
                resources=resources,
                **extra.get(node["NodeID"], {}),
            )
        )
    return out


def node_started_at(node_id: str) -> float | None:
    """When `node_id` registered with the cluster (None when unknown)."""
    return next((n.started_at for n in list_nodes() if n.node_id == node_id), None)
