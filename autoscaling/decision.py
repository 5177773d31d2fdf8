"""One autoscaling decision as Serve's controller needs it, from what Serve reports about a
deployment. No Ray: the adapter passes in the numbers from Serve's context and records the scale
events this returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autoscaling.policy import RaygpuPolicy

SEEN_TARGET_KEY = "raygpu_seen_target"
PLAN_KEY = "raygpu_plan"


@dataclass(frozen=True)
class ServeObservation:
    """What Serve's context says about a deployment at one tick."""

    running: int  # replicas running
    target: int  # Serve's current target replica count
    inflight: float  # requests queued or running, as Serve's routers report them
    policy_state: dict[str, Any] = field(default_factory=dict)  # what the last decision returned


@dataclass(frozen=True)
class ServeDecision:
    replicas: int
    scale_events: list[tuple[int, int]]  # (from, to) replica counts to record, in order
    policy_state: dict[str, Any]
    next_check: float = float("inf")  # when the policy next wants to be asked if nothing changes


def decide(policy: RaygpuPolicy, observation: ServeObservation, now: float) -> ServeDecision:
    """The replica count for this tick. Replicas Serve is still starting toward its target count
    as starting; a target Serve changed on its own (its 0→1 path for a call at zero, which does
    not call the policy) is recorded as a scale event too."""
    starting = max(0, observation.target - observation.running)
    replicas, next_check = policy.decide(now, observation.running, starting, observation.inflight)
    events: list[tuple[int, int]] = []
    seen_target = observation.policy_state.get(SEEN_TARGET_KEY)
    if seen_target is not None and seen_target != observation.target:
        events.append((seen_target, observation.target))
    if replicas != observation.target:
        events.append((observation.target, replicas))
    return ServeDecision(replicas, events, {SEEN_TARGET_KEY: replicas, PLAN_KEY: policy.plan.basis}, next_check)
