"""A replica start as the scaling policy plans with it: from the scale-up decision to a ready
replica, the node's provisioning included (a call's own work and the decision's latency are not
part of it). Pure: reads the phase durations the meter records per start."""

from __future__ import annotations

from typing import Any

# A replica's own start phases, in order (deployments/replicas/start_phases.py marks them): a plain
# function has no weights or engine; a class on a warm worker that held its app marks when it adopted
# the worker's instance (waiting, if need be, for its `snap=True` hooks to finish); a vLLM replica also reports its engine's phases and its first
# streamed token.
REPLICA_PHASES = (
    "process",
    "imports",
    "adopted",
    "engine_process",
    "weights",
    "kv_cache",
    "warmup",
    "engine_init",
    "ready",
    "first_token",
    "first_response",
)
# The phases between a scale-up decision and a ready replica.
PLANNED_PHASES = ("provision", "scheduling", *REPLICA_PHASES[: REPLICA_PHASES.index("ready") + 1])


def planned_start_s(phases: dict[str, Any]) -> float | None:
    """Seconds one recorded start took, or None when it never reached `ready` or is malformed."""
    if not isinstance(phases, dict) or "ready" not in phases:
        return None
    total = 0.0
    for phase in PLANNED_PHASES:
        seconds = phases.get(phase, 0.0)
        if not isinstance(seconds, (int, float)) or not 0.0 <= seconds < 86_400.0:
            return None
        total += float(seconds)
    return total
