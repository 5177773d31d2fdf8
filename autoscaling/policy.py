"""The pure scaling policy: from one observation of a function and what it learned of its
traffic, the replica count it wants and the time it next wants to be asked.

No Ray import: the Serve adapter, the trace simulator and the unit tests run this very code.
Every policy (raygpu's and the baselines in `autoscaling/baselines.py`) has the same two calls:
`observe_arrival(t)` (online learning, arrivals already seen only) and
`decide(now, running, starting, inflight) -> (replicas, next_check_at)`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from autoscaling.history import ArrivalHistory

NEVER = math.inf


@dataclass(frozen=True)
class ScalingConfig:
    """A function's scaling settings plus the policy's knobs (defaults named and explained)."""

    min_replicas: int = 0
    max_replicas: int = 10
    buffer_replicas: int = 0  # extra idle replicas kept while the function is busy
    inputs_per_replica: int = 1
    idle_window_s: float = 60.0  # scaledown_window: the 1→0 delay when nothing better is known
    # A replica beyond the first is released once unneeded this long (None: one replica start,
    # the ski-rental break-even); the last 1→0 step waits the longer idle window or learned plan.
    downscale_delay_s: float | None = None
    upscale_step: int = 1  # from ≥1 replica, grow by max(step, current*(factor-1)) per decision...
    upscale_factor: float = 2.0
    upscale_interval_s: float = 2.0  # ...at most once per interval: 1→2→4, never 1→max at once
    start_time_s: float = 30.0  # expected replica start: how early a pre-warm must begin
    predictive: bool = True  # learn idle times and periods; False: fixed idle window only
    # After the last call stay warm for one replica start even when a long gap is predicted: the
    # ski-rental rule (idling as long as a cold start costs is never worse than 2x the best choice).
    linger_s: float | None = None  # None: start_time_s
    # In-flight calls are averaged over this long before replicas beyond the first are added: a
    # backlog is worth a new replica when it lasts about as long as the replica takes to start.
    load_average_s: float | None = None  # None: start_time_s
    max_keep_alive_s: float = 600.0  # never keep an idle replica longer than this on a prediction
    prewarm_percentile: float = 5.0
    keep_alive_percentile: float = 99.0
    burst_gap_s: float = 1.0  # arrivals closer than this are one burst, not an idle gap

    @property
    def downscale_delay(self) -> float:
        return self.start_time_s if self.downscale_delay_s is None else self.downscale_delay_s

    @property
    def linger(self) -> float:
        return self.start_time_s if self.linger_s is None else self.linger_s

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.inputs_per_replica < 1 or self.upscale_factor < 1 or self.upscale_step < 1:
            raise ValueError("inputs_per_replica, upscale_step >= 1 and upscale_factor >= 1")


@dataclass
class WarmPlan:
    """What the policy expects after the last arrival: stay warm until `keep_until`, and (if a
    next arrival is predicted beyond that) be warm again over [prewarm_from, prewarm_until)."""

    keep_until: float = -NEVER
    prewarm_from: float = NEVER
    prewarm_until: float = -NEVER
    basis: str = "none"


class RaygpuPolicy:
    """Scale to zero with learned keep-alive and pre-warm, bounded steps up, hysteresis down."""

    name = "raygpu"

    def __init__(self, config: ScalingConfig, history: ArrivalHistory | None = None):
        self.config = config
        self.history = history or ArrivalHistory(burst_gap_s=config.burst_gap_s)
        self.plan = WarmPlan()
        self.last_busy: float | None = None
        self.recent_wants: deque[tuple[float, int]] = deque()  # (time, wanted), wanted decreasing
        # How long an extra replica stays unneeded before it goes: starts at one replica start and
        # adapts, doubling when released replicas are wanted back soon (churn costs a start each
        # time) and halving back when releases prove right.
        self.release_delay_s = config.downscale_delay
        self.last_release: float | None = None
        self.last_upscale: float = -NEVER
        self.load_tau_s = max(0.1, config.load_average_s if config.load_average_s is not None else config.start_time_s)
        self.load_avg = 0.0
        self.load_level = 0.0
        self.load_at: float | None = None
        if self.history.last_arrival is not None:
            self._replan(self.history.last_arrival)

    # --- learning ------------------------------------------------------------------------------
    def observe_arrival(self, t: float) -> None:
        self.history.observe(t)
        self._replan(t)

    def _replan(self, last: float) -> None:
        cfg = self.config
        plan = WarmPlan(keep_until=last + cfg.idle_window_s, basis="fixed")
        if cfg.predictive:
            lead = cfg.start_time_s * 1.1 + 1.0  # pre-warm with ATC'20's 10% margin
            period = self.history.period()
            if period is not None:
                tolerance = max(2.0, 0.1 * period)
                if period <= lead + cfg.linger:
                    plan = WarmPlan(keep_until=last + period + tolerance, basis="period")
                else:
                    plan = WarmPlan(
                        keep_until=last + cfg.linger,
                        prewarm_from=last + period - lead,
                        prewarm_until=last + period + tolerance,
                        basis="period",
                    )
            elif self.history.representative():
                low = self.history.percentile(cfg.prewarm_percentile, lower_edge=True)
                high = min(self.history.percentile(cfg.keep_alive_percentile), cfg.max_keep_alive_s)
                if low - lead > cfg.linger and high > low:
                    plan = WarmPlan(
                        keep_until=last + cfg.linger,
                        prewarm_from=last + low - lead,
                        prewarm_until=last + high,
                        basis="histogram",
                    )
                else:
                    plan = WarmPlan(keep_until=last + max(high, cfg.linger), basis="histogram")
        self.plan = plan

    # --- deciding ------------------------------------------------------------------------------
    def _idle_target(self, now: float) -> tuple[int, float]:
        """Replicas wanted with nothing in flight, and when that next changes."""
        plan = self.plan
        keep_until = plan.keep_until
        if self.last_busy is not None:
            keep_until = max(keep_until, self.last_busy + min(self.config.linger, self.config.idle_window_s))
        if now < keep_until:
            return 1, keep_until
        if plan.prewarm_from <= now < plan.prewarm_until:
            return 1, plan.prewarm_until
        if now < plan.prewarm_from:
            return 0, plan.prewarm_from
        return 0, NEVER

    def _drain_s(self, backlog: float, running: int) -> float:
        """Expected time for the running replicas to work off `backlog` queued calls, from
        Little's law: time in system = average calls in flight / arrival rate."""
        rate = self.history.rate_ewma
        if rate <= 0:
            return 0.0
        time_in_system = max(self.load_avg, 1.0) / rate
        return backlog * time_in_system / (running * self.config.inputs_per_replica)

    def decide(self, now: float, running: int, starting: int, inflight: float) -> tuple[int, float]:
        cfg = self.config
        current = running + starting
        next_check = NEVER
        if self.load_at is not None and now > self.load_at:
            self.load_avg += (1 - math.exp((self.load_at - now) / self.load_tau_s)) * (self.load_level - self.load_avg)
        self.load_at, self.load_level = now, inflight
        if inflight > 0:
            self.last_busy = now
            want = max(1, math.ceil(self.load_avg / cfg.inputs_per_replica - 0.05))
            backlog = inflight - running * cfg.inputs_per_replica
            if backlog > 0 and running > 0 and self._drain_s(backlog, running) > cfg.start_time_s / 2:
                # the queue outlasts half a start: new replicas will still find work
                want = max(want, math.ceil(inflight / cfg.inputs_per_replica))
            want += cfg.buffer_replicas
        else:
            want, next_check = self._idle_target(now)
            if want and self.last_busy is not None and now - self.last_busy < cfg.downscale_delay:
                want += cfg.buffer_replicas
        want = max(cfg.min_replicas, min(cfg.max_replicas, want))

        self._learn_from_last_release(now, want, current)
        if want > current:
            self._recent_max(now, want)
            if current == 0:
                self.last_upscale = now
                return 1, min(next_check, now + cfg.upscale_interval_s) if want > 1 else next_check
            if now - self.last_upscale < cfg.upscale_interval_s:
                return current, min(next_check, self.last_upscale + cfg.upscale_interval_s)
            grown = max(current + cfg.upscale_step, math.ceil(current * cfg.upscale_factor))
            self.last_upscale = now
            target = min(want, grown)
            return target, (min(next_check, now + cfg.upscale_interval_s) if target < want else next_check)
        if want < current:
            if want == 0:
                # The idle window (or the learned plan) already was the 1→0 delay.
                self.recent_wants.clear()
                return 0, next_check
            kept, until = self._recent_max(now, want)
            if kept < current:
                self.last_release = now
                return kept, min(next_check, until)
            return current, min(next_check, until)
        self._recent_max(now, want)
        return current, next_check

    def _learn_from_last_release(self, now: float, want: int, current: int) -> None:
        if self.last_release is None:
            return
        since = now - self.last_release
        if want > current >= 1 and since < self.release_delay_s:
            self.release_delay_s = min(2 * self.release_delay_s, 4 * self.config.downscale_delay)
            self.last_release = None
        elif since > 4 * self.release_delay_s:
            self.release_delay_s = max(self.config.downscale_delay, self.release_delay_s / 2)
            self.last_release = None

    def _recent_max(self, now: float, want: int) -> tuple[int, float]:
        """The most replicas wanted within the last downscale delay (each replica beyond the
        first is released once it has been unneeded that long), and when that next drops."""
        recent = self.recent_wants
        while recent and recent[-1][1] <= want:
            recent.pop()
        recent.append((now, want))
        delay = self.release_delay_s
        while len(recent) > 1 and recent[0][0] + delay <= now:
            recent.popleft()
        return recent[0][1], (recent[0][0] + delay if len(recent) > 1 else NEVER)

    # --- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history.to_dict(), "last_busy": self.last_busy, "release_delay_s": self.release_delay_s}

    @classmethod
    def from_dict(cls, config: ScalingConfig, data: dict[str, Any] | None) -> "RaygpuPolicy":
        data = data or {}
        policy = cls(config, ArrivalHistory.from_dict(data.get("history")))
        policy.last_busy = data.get("last_busy")
        policy.release_delay_s = data.get("release_delay_s", policy.release_delay_s)
        return policy

    def describe(self) -> dict[str, Any]:
        return {
            "plan": asdict(self.plan),
            "period": self.history.period(),
            "representative": self.history.representative(),
        }


def gateway_replicas(inflight_per_replica: list[float], target_inflight: float, max_replicas: int) -> int:
    """Gateway replicas needed for the in-flight calls they report: at least one, at most the cap."""
    total = sum(inflight_per_replica)
    return max(1, min(max_replicas, math.ceil(total / target_inflight) if total > 0 else 1))
