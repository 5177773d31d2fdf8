"""`raygpu doctor`: what this host and every node of the cluster can run (GPUs, usable CPU
instructions, torch and vLLM builds, free memory and shared memory), each node's report made by a
task pinned to it."""

from __future__ import annotations

from typing import Any

from deployments.node.host_report import host_report
from raygpu.sdk.errors import NoClusterError

NODE_REPORT_TIMEOUT_S = 300.0  # a node probes its CPU kernels once (tens of seconds) and then answers from its cache


def node_reports(timeout_s: float = NODE_REPORT_TIMEOUT_S) -> list[dict[str, Any]]:
    """One report per alive node of the attached cluster, with Ray's view of it beside."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    report_task = ray.remote(num_cpus=0)(host_report)
    pending = []
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        ref = report_task.options(scheduling_strategy=strategy).remote()
        resources = node.get("Resources", {})
        ray_view = {
            "node_id": node["NodeID"],
            "address": node.get("NodeManagerAddress"),
            "head": "node:__internal_head__" in resources,
            "gpus": resources.get("GPU", 0),
            "accelerators": sorted(
                k.removeprefix("accelerator_type:") for k in resources if k.startswith("accelerator_type:")
            ),
        }
        pending.append((ray_view, ref))
    out = []
    for ray_view, ref in pending:
        try:
            report = ray.get(ref, timeout=timeout_s)
        except Exception as exc:  # a node that cannot answer is listed with the reason
            report = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        out.append({"ray": ray_view, **report})
    return out


def doctor(address: str | None, nodes: bool = True) -> dict[str, Any]:
    """This host's report, and each node's when a cluster is reachable (the reason otherwise)."""
    from raygpu.sdk.connection import connect

    result: dict[str, Any] = {"host": host_report(), "nodes": [], "cluster": None}
    if not nodes:
        return result
    try:
        connect(address)
    except NoClusterError as exc:
        result["cluster"] = str(exc)
        return result
    result["nodes"] = node_reports()
    return result
