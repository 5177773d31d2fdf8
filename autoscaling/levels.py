"""How long a replica beyond the first stays once the load no longer needs it, learned from how
soon released capacity was wanted back. Pure (no Ray).

Each replica level k >= 2 is free from the moment fewer than k replicas are wanted until k are
wanted again; those gaps, pooled over levels, form a histogram like the one of a function's calls,
and the release delay is the keep-alive that is cheapest over it (each re-start costs a replica
start and makes queued calls wait, priced like a cold start). A level that stays free past the
longest keep-alive counts as a gap beyond it, so capacity never wanted back teaches short delays.
"""

from __future__ import annotations

from typing import Any

from autoscaling.history import ArrivalHistory, bin_edges
from autoscaling.warm_plan import cheapest_plan

_EDGES = bin_edges()


class ReplicaLevels:
    """Free periods of replica levels >= 2 and the release delay they teach."""

    def __init__(self, default_delay_s: float, cold_start_cost: float, max_delay_s: float, min_gaps: int):
        self.default_delay_s = default_delay_s
        self.cold_start_cost = cold_start_cost
        self.max_delay_s = max_delay_s
        self.min_gaps = min_gaps
        self.gaps = ArrivalHistory(burst_gap_s=0.0)
        self.free_since: dict[int, float] = {}
        self.wanted = 0
        self._delay_s = default_delay_s
        self._delay_at = -1  # gaps_seen when the delay was worked out

    def observe_wanted(self, now: float, wanted: int) -> None:
        """The replicas the load wants now (before any hysteresis)."""
        if wanted > self.wanted:
            for level in range(max(2, self.wanted + 1), wanted + 1):
                since = self.free_since.pop(level, None)
                if since is not None and now - since >= 1.0:  # shorter gaps: any delay bridges them
                    self.gaps.observe_gap(now - since)
        elif wanted < self.wanted:
            for level in range(max(2, wanted + 1), self.wanted + 1):
                self.free_since[level] = now
        self.wanted = wanted
        if self.free_since:
            horizon = now - self.max_delay_s
            for level in [k for k, since in self.free_since.items() if since < horizon]:
                self.gaps.observe_gap(now - self.free_since.pop(level))

    def invalidate(self) -> None:
        """Work the delay out again at the next ask (its prices changed)."""
        self._delay_at = -1

    def release_delay_s(self) -> float:
        """How long an unneeded replica beyond the first is kept."""
        seen = self.gaps.gaps_seen
        if seen < self.min_gaps:
            return self.default_delay_s
        if self._delay_at < 0 or seen - self._delay_at >= max(1, seen // 20):
            counts, sums, beyond = self.gaps.decayed()
            plan = cheapest_plan(
                _EDGES,
                counts,
                sums,
                beyond,
                cold_start_cost=self.cold_start_cost,
                lead_s=0.0,
                max_keep_s=self.max_delay_s,
                keep_only=True,
            )
            self._delay_s = max(1.0, plan.keep_s)
            self._delay_at = seen
        return self._delay_s

    def to_dict(self) -> dict[str, Any]:
        return {"gaps": self.gaps.to_dict()}

    def restore(self, data: dict[str, Any] | None) -> None:
        if data and data.get("gaps"):
            self.gaps = ArrivalHistory.from_dict(data["gaps"])
            self.gaps.burst_gap_s = 0.0
