"""Whether this node runs replicas: per-node services on autoscaled nodes (warm pool, weight cache)
leave once it runs none, because the raylet counts any live actor as work and a service that
stayed would keep an idle GPU node from ever being removed."""

from __future__ import annotations

import os

REPLICA_TITLE = "ray::ServeReplica"
# A per-node service on an autoscaled node leaves this long after the node's last replica stopped.
RELEASE_AFTER_S = 15.0
# How often such a service looks.
OCCUPANCY_CHECK_S = 2.0


def runs_replicas() -> bool:
    """Whether a Serve replica runs on this node (a worker of this raylet titled ray::ServeReplica;
    the caller is itself a worker of this node's raylet)."""
    import psutil

    raylet_pid = os.getppid()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if cmdline and cmdline[0].startswith(REPLICA_TITLE) and proc.ppid() == raylet_pid:
                return True
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return False


def release_due(runs: bool, last_busy: float, now: float, grace_s: float = RELEASE_AFTER_S) -> bool:
    """Whether a service on an autoscaled node should leave: its node has run no replica for `grace_s`."""
    return not runs and now - last_busy >= grace_s


def on_head(node_id: str) -> bool:
    """Whether `node_id` is the head node (its services stay: the head is never scaled down)."""
    import ray

    return any(n["NodeID"] == node_id and "node:__internal_head__" in n.get("Resources", {}) for n in ray.nodes())
