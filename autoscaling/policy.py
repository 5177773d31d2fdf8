"""The pure scaling policy: from one observation of a function and its own state, a replica count.

No Ray import: the Serve adapter and the unit tests run this very code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ScalingLimits:
    """A function's scaling settings, in the policy's terms."""

    min_replicas: int = 0
    max_replicas: int = 10
    buffer_replicas: int = 0
    inputs_per_replica: int = 1
    idle_window_s: float = 60.0


@dataclass(frozen=True)
class Observation:
    """What the policy sees at one decision."""

    now: float
    current_replicas: int
    ongoing_requests: float
    last_arrival: float | None = None


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between decisions (plain data, so it can be persisted)."""

    last_busy: float | None = None
    below_since: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"last_busy": self.last_busy, "below_since": self.below_since}

    @classmethod
    def from_dict(cls, data: dict | None) -> "PolicyState":
        data = data or {}
        return cls(last_busy=data.get("last_busy"), below_since=data.get("below_since"))


@dataclass(frozen=True)
class Decision:
    replicas: int
    state: PolicyState = field(default_factory=PolicyState)


def clamp(replicas: int, limits: ScalingLimits) -> int:
    return max(limits.min_replicas, min(limits.max_replicas, replicas))


def decide(limits: ScalingLimits, obs: Observation, state: PolicyState) -> Decision:
    """Scale up at once to cover the load (plus buffer while busy). Scale N→M≥1 only after the
    load stayed below N for the idle window, and to the floor (zero) once the function has had no
    traffic for the idle window, so a quiet second never drops a replica."""
    last_busy = state.last_busy
    if obs.ongoing_requests > 0:
        last_busy = obs.now
    if obs.last_arrival is not None and (last_busy is None or obs.last_arrival > last_busy):
        last_busy = obs.last_arrival
    recently_busy = last_busy is not None and obs.now - last_busy < limits.idle_window_s

    needed = math.ceil(obs.ongoing_requests / limits.inputs_per_replica) if obs.ongoing_requests > 0 else 0
    wanted = needed + limits.buffer_replicas if recently_busy else needed
    if recently_busy:
        wanted = max(wanted, 1)
    wanted = clamp(wanted, limits)

    if wanted >= obs.current_replicas:
        return Decision(wanted, replace(state, last_busy=last_busy, below_since=None))
    if not recently_busy:  # idle for the whole window: release everything above the floor
        return Decision(wanted, replace(state, last_busy=last_busy, below_since=None))
    below_since = state.below_since if state.below_since is not None else obs.now
    if obs.now - below_since >= limits.idle_window_s:
        return Decision(wanted, replace(state, last_busy=last_busy, below_since=None))
    return Decision(obs.current_replicas, replace(state, last_busy=last_busy, below_since=below_since))


def gateway_replicas(inflight_per_replica: list[float], target_inflight: float, max_replicas: int) -> int:
    """Gateway replicas needed for the in-flight calls they report: at least one, at most the cap."""
    total = sum(inflight_per_replica)
    return max(1, min(max_replicas, math.ceil(total / target_inflight) if total > 0 else 1))
