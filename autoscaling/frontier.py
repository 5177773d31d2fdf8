"""Where a policy stands on a trace: against the fixed keep-alive frontier (fixed_K for K from 10 s
to 30 min: what idling buys in cold starts with no learning at all) and against the oracle that
knows every future arrival (the limit). Pure: no Ray."""

from __future__ import annotations

from typing import Any

from autoscaling.traces import FunctionTrace, Trace

FRONTIER_KEEP_ALIVES_S = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0)


def oracle_function_idle_s(fn: FunctionTrace, start_time_s: float) -> float:
    """Idle (and starting) replica-seconds of one function under the oracle: no cold start, the
    first replica started just in time, and each idle gap between busy periods costs
    min(gap, start time) (idle through it, or stop and start again in time). With several replicas
    busy at once this is a lower bound (their extra starts and idling are not counted)."""
    if not fn.arrivals:
        return 0.0
    idle = start_time_s
    busy_until = fn.arrivals[0] + fn.service_s[0]
    for arrival, service in zip(fn.arrivals[1:], fn.service_s[1:]):
        if arrival > busy_until:
            idle += min(arrival - busy_until, start_time_s)
        busy_until = max(busy_until, arrival + service)
    return idle


def oracle(trace: Trace, start_time_s: float, gpus_per_replica: int = 1) -> dict[str, float]:
    return {
        "cold_start_rate": 0.0,
        "idle_gpu_seconds": gpus_per_replica * sum(oracle_function_idle_s(f, start_time_s) for f in trace.functions),
    }


def frontier_points(fixed: dict[float, dict[str, Any]]) -> list[dict[str, float]]:
    """The fixed keep-alive results as frontier points, fewest cold starts first."""
    points = [
        {"keep_alive_s": k, "cold_start_rate": r["cold_start_rate"], "idle_gpu_seconds": r["idle_gpu_seconds"]}
        for k, r in fixed.items()
    ]
    return sorted(points, key=lambda p: (p["cold_start_rate"], -p["keep_alive_s"]))


def frontier_idle_at(points: list[dict[str, float]], cold_start_rate: float) -> float | None:
    """Idle GPU-seconds of the fixed keep-alive frontier at a cold-start rate (linear between the two
    keep-alives around it); None when the rate is below every keep-alive's (no fixed keep-alive
    reaches that few cold starts); the shortest keep-alive's idle when it is above all of them."""
    if not points:
        return None
    if cold_start_rate < points[0]["cold_start_rate"]:
        return None
    for low, high in zip(points, points[1:]):
        if low["cold_start_rate"] <= cold_start_rate <= high["cold_start_rate"]:
            span = high["cold_start_rate"] - low["cold_start_rate"]
            if span <= 0:
                return min(low["idle_gpu_seconds"], high["idle_gpu_seconds"])
            w = (cold_start_rate - low["cold_start_rate"]) / span
            return low["idle_gpu_seconds"] + w * (high["idle_gpu_seconds"] - low["idle_gpu_seconds"])
    return points[-1]["idle_gpu_seconds"]


def position(policy: dict[str, Any], points: list[dict[str, float]], limit: dict[str, float]) -> dict[str, Any]:
    """A policy against the frontier (its idle over the frontier's at its own cold-start rate: 1 on
    the frontier, 0.8 is 20% below) and against the oracle (how far its idle is above the limit)."""
    at = frontier_idle_at(points, policy["cold_start_rate"])
    beyond = at is None and bool(points)
    if beyond:
        # Fewer cold starts than the longest keep-alive: reaching them with a fixed keep-alive would
        # take at least its idle, so the ratio against it is an upper bound.
        at = points[0]["idle_gpu_seconds"]
    ratio = policy["idle_gpu_seconds"] / at if at else None
    best = limit["idle_gpu_seconds"]
    return {
        "frontier_idle_gpu_seconds": at,
        "idle_over_frontier": ratio,
        "below_frontier_by": None if ratio is None else 1 - ratio,
        "fewer_cold_starts_than_any_keep_alive": beyond,
        "idle_over_oracle": policy["idle_gpu_seconds"] / best if best else None,
    }


def dominated_by(policies: dict[str, dict[str, Any]], name: str) -> list[str]:
    """The policies better than `name` on both axes (fewer cold starts and less idle)."""
    me = policies[name]
    return [
        other
        for other, r in policies.items()
        if other != name
        and r["cold_start_rate"] < me["cold_start_rate"]
        and r["idle_gpu_seconds"] < me["idle_gpu_seconds"]
    ]
