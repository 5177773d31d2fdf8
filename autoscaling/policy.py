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
from dataclasses import asdict, dataclass, replace
from typing import Any

from autoscaling.history import ArrivalHistory, bin_edges
from autoscaling.levels import ReplicaLevels
from autoscaling.load import ArrivalRate, ServiceTime
from autoscaling.warm_plan import GapPlan, cheapest_plan

NEVER = math.inf
_EDGES = bin_edges()
START_SAMPLES = 5  # measured replica starts the planned start time is the median of
MIN_START_TIME_S, MAX_START_TIME_S = 0.1, 3600.0
# A replica started for a scheduled run waits this long past the due time for the run to arrive.
SCHEDULED_RUN_WAIT_S = 30.0
# After a run ends, the in-flight count Serve reports (an average over its look-back period) still
# holds it this long: that is the run's, not a caller's.
SCHEDULED_RUN_TAIL_S = 5.0


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
    max_keep_alive_s: float = 1800.0  # never keep an idle replica longer than this on a prediction
    # What sparing one call a cold start is worth, in replica starts of idle GPU time: the exchange
    # rate between the two costs the learned plans trade (the start itself is one of them).
    cold_start_worth_starts: float = 8.0
    min_gaps: int = 10  # gaps seen before the learned plan replaces the idle window
    burst_gap_s: float = 1.0  # arrivals closer than this are one burst, not an idle gap
    queue_clear_starts: float = 2.0  # queued work is to be cleared within this many replica starts
    staffing_margin: float = 1.0  # spare replicas per square root of the replicas the load keeps busy

    @property
    def downscale_delay(self) -> float:
        return self.start_time_s if self.downscale_delay_s is None else self.downscale_delay_s

    @property
    def linger(self) -> float:
        return self.start_time_s if self.linger_s is None else self.linger_s

    @property
    def cold_start_cost(self) -> float:
        """Idle replica-seconds one avoided cold start is worth."""
        return self.cold_start_worth_starts * self.start_time_s

    @property
    def prewarm_lead_s(self) -> float:
        """How early a pre-warm starts a replica: one start plus ATC'20's 10% margin and a second."""
        return self.start_time_s * 1.1 + 1.0

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
    keep_s: float = 0.0  # how long the replica stays after the function was last busy


@dataclass(frozen=True)
class ScheduledRun:
    """A schedule's next due time (on the policy's clock) and whether one of its runs is going."""

    due: float
    running: bool = False


class RaygpuPolicy:
    """Scale to zero with learned keep-alive and pre-warm, bounded steps up, hysteresis down."""

    name = "raygpu"

    def __init__(self, config: ScalingConfig, history: ArrivalHistory | None = None):
        self.config = config
        self.history = history or ArrivalHistory()
        self.history.burst_gap_s = config.burst_gap_s
        self.history.session_gap_s = config.start_time_s
        self.plan = WarmPlan(keep_s=config.idle_window_s)  # until an arrival is seen: the idle window
        self._gap_plan: GapPlan | None = None
        self._gap_plan_at = -1  # gaps_seen when the gap plan was computed
        self.last_busy: float | None = None
        self.recent_wants: deque[tuple[float, int]] = deque()  # (time, wanted), wanted decreasing
        # How long an extra replica stays unneeded before it goes: one replica start (or the
        # configured delay) until released capacity was seen wanted back, then what that teaches.
        self.levels = ReplicaLevels(
            default_delay_s=config.downscale_delay,
            cold_start_cost=config.cold_start_cost,
            max_delay_s=config.max_keep_alive_s,
            min_gaps=config.min_gaps,
        )
        self.last_upscale: float = -NEVER
        self.measured_starts: list[float] = []
        self.load_tau_s = max(0.1, config.load_average_s if config.load_average_s is not None else config.start_time_s)
        self.load_avg = 0.0
        self.load_level = 0.0
        self.busy_avg = 0.0  # the same average of the slots actually busy
        self.busy_level = 0.0
        self.inflight_peak = 0.0  # the most calls in flight lately (decays over the same time)
        self.load_at: float | None = None
        self.service = ServiceTime()
        self.arrival_rate = ArrivalRate(config.start_time_s)
        self.queued_since: float | None = None
        self.backlog_marks: deque[tuple[float, float]] = deque()  # (time, queued calls), a start's worth
        # The function's schedule, when it has one: a replica is started one start ahead of each due
        # run and held while the run goes; the run itself keeps nothing warm after it.
        self.schedule: ScheduledRun | None = None
        self.schedule_tail_until = -NEVER
        if self.history.last_arrival is not None:
            self._replan(self.history.last_arrival)

    # --- learning ------------------------------------------------------------------------------
    def observe_arrival(self, t: float) -> None:
        self.history.observe(t)
        self.service.observe_arrival()
        self.arrival_rate.observe_arrival(t)
        self._replan(t)

    def observe_start(self, seconds: float) -> None:
        """A measured replica start (from the scale-up decision to ready, a node's provisioning
        included): the plans use the median of the last few instead of the configured guess."""
        if not (MIN_START_TIME_S <= seconds <= MAX_START_TIME_S):
            return
        self.measured_starts = (self.measured_starts + [seconds])[-START_SAMPLES:]
        ordered = sorted(self.measured_starts)
        self._use_start_time(ordered[len(ordered) // 2])

    def _use_start_time(self, start_time_s: float) -> None:
        if start_time_s == self.config.start_time_s:
            return
        cfg = self.config = replace(self.config, start_time_s=start_time_s)
        self.history.session_gap_s = start_time_s
        self.levels.default_delay_s = cfg.downscale_delay
        self.levels.cold_start_cost = cfg.cold_start_cost
        self.levels.invalidate()
        self.arrival_rate.tau_s = max(0.1, start_time_s)
        if cfg.load_average_s is None:
            self.load_tau_s = max(0.1, start_time_s)
        self._gap_plan = None
        if self.history.last_arrival is not None:
            self._replan(self.history.last_arrival)

    def plan_schedule(self, scheduled: ScheduledRun | None, now: float) -> None:
        """The scheduler's plan for this function at `now` (None: it has no schedule)."""
        before = self.schedule
        if before is not None and (
            scheduled is None or scheduled.due != before.due or (before.running and not scheduled.running)
        ):
            self.schedule_tail_until = now + SCHEDULED_RUN_TAIL_S  # a run has just ended (or was due)
        self.schedule = scheduled

    def _schedule_window(self, now: float) -> tuple[bool, float]:
        """Whether a scheduled run holds a replica now (from one planned start before it is due until
        it ends), and when that next changes."""
        scheduled = self.schedule
        if scheduled is None:
            return False, NEVER
        if scheduled.running:
            return True, NEVER  # until the plan says it ended
        warm_from = scheduled.due - self.config.prewarm_lead_s
        if now < warm_from:
            return False, warm_from
        if now < scheduled.due + SCHEDULED_RUN_WAIT_S:
            return True, scheduled.due + SCHEDULED_RUN_WAIT_S
        return False, NEVER

    def _replan(self, last: float) -> None:
        cfg = self.config
        plan = WarmPlan(keep_until=last + cfg.idle_window_s, basis="fixed", keep_s=cfg.idle_window_s)
        if cfg.predictive:
            gap_plan = self.gap_plan()
            period = self.history.period()
            if period is not None and self.history.session_start is not None:
                plan = self._period_plan(last, period, gap_plan)
            elif gap_plan is not None:
                plan = WarmPlan(
                    keep_until=last + gap_plan.keep_s,
                    prewarm_from=last + gap_plan.prewarm_from_s - cfg.prewarm_lead_s,
                    prewarm_until=last + gap_plan.prewarm_until_s,
                    basis="histogram",
                    keep_s=gap_plan.keep_s,
                )
        self.plan = plan

    def _period_plan(self, last: float, period: float, gap_plan: GapPlan | None) -> WarmPlan:
        """Warm again in time for the next session of a periodic function (timer or cron burst)."""
        cfg = self.config
        assert self.history.session_start is not None
        due = self.history.session_start + period
        tolerance = max(2.0, min(0.1 * period, 1.5 * self.history.period_spread()))
        # inside a session, linger as the gap histogram says (its pre-warm plan's keep), else a start
        linger = gap_plan.keep_s if gap_plan is not None and gap_plan.prewarms else cfg.linger
        if due - tolerance - cfg.prewarm_lead_s <= last + linger:
            return WarmPlan(keep_until=max(last + linger, due + tolerance), basis="period", keep_s=linger)
        return WarmPlan(
            keep_until=last + linger,
            prewarm_from=due - tolerance - cfg.prewarm_lead_s,
            prewarm_until=due + tolerance,
            basis="period",
            keep_s=linger,
        )

    def gap_plan(self) -> GapPlan | None:
        """The cheapest warm plan for the learned gaps (None until enough gaps were seen). Worked
        out again as the histogram fills: after every gap at first, then every ~5% more gaps."""
        history, cfg = self.history, self.config
        if history.gaps_seen < cfg.min_gaps:
            return None
        if self._gap_plan is None or history.gaps_seen - self._gap_plan_at >= max(1, history.gaps_seen // 20):
            counts, sums, beyond = history.decayed()
            self._gap_plan = cheapest_plan(
                _EDGES,
                counts,
                sums,
                beyond,
                cold_start_cost=cfg.cold_start_cost,
                lead_s=cfg.prewarm_lead_s,
                max_keep_s=cfg.max_keep_alive_s,
            )
            self._gap_plan_at = history.gaps_seen
        return self._gap_plan

    # --- deciding ------------------------------------------------------------------------------
    def _idle_target(self, now: float) -> tuple[int, float]:
        """Replicas wanted with nothing in flight, and when that next changes."""
        plan = self.plan
        keep_until = plan.keep_until
        if self.last_busy is not None:
            keep_until = max(keep_until, self.last_busy + plan.keep_s)
        if now < keep_until:
            return 1, keep_until
        if plan.prewarm_from <= now < plan.prewarm_until:
            return 1, plan.prewarm_until
        if now < plan.prewarm_from:
            return 0, plan.prewarm_from
        return 0, NEVER

    def _busy_target(self, now: float, running: int, starting: int, inflight: float) -> int:
        """Replicas wanted while calls are in flight: the slots the arriving work keeps busy (rate of
        the last start time x service time) plus enough to clear the queued work within about two
        starts. A burst of queued short calls is a few replicas of work, not a replica per call; a
        queue that does not drain (callers waiting on their previous calls) adds a replica a step."""
        cfg = self.config
        slots = cfg.inputs_per_replica
        backlog = max(0.0, inflight - running * slots)
        service = self.service.seconds()
        if service is None:  # nothing measured yet: the time-averaged load, and Little's law
            want = max(1, math.ceil(self.load_avg / slots - 0.05))
            if backlog > 0 and running > 0 and self._drain_s(backlog, running) > cfg.start_time_s / 2:
                want = max(want, math.ceil(inflight / slots))
            return want
        # the work arriving (rate x service time), never less than the slots seen busy (calls that
        # reach the replicas without an arrival record still count), never more than in flight
        arrived_work = max(self.arrival_rate.at_time(now) * service, self.busy_avg)
        carried = min(self.load_avg, arrived_work) / slots
        queued = backlog * service / (cfg.queue_clear_starts * cfg.start_time_s) / slots
        # square-root staffing (Halfin-Whitt): spare replicas grow as the root of the load, so calls
        # rarely wait at any load, and a large function runs nearly full; never more spare than the
        # calls lately in flight could use (one caller waiting on each answer needs one replica)
        spare = min(cfg.staffing_margin * math.sqrt(carried), max(0.0, self.inflight_peak / slots - carried))
        want = max(1, math.ceil(carried + queued + spare - 0.05))
        if self._queue_stuck(now, backlog):
            # callers that call again when answered show their demand only as a standing queue:
            # one more replica, then a start time to see whether the queue shrinks
            want = max(want, running + starting + 1)
            self.queued_since = now
        return want

    def _queue_stuck(self, now: float, backlog: float) -> bool:
        """Whether calls have queued for a whole start time without the queue getting shorter."""
        start = self.config.start_time_s
        marks = self.backlog_marks
        if backlog <= 0:
            self.queued_since = None
            marks.clear()
            return False
        if self.queued_since is None:
            self.queued_since = now
        if not marks or now - marks[-1][0] >= start / 8:
            marks.append((now, backlog))
        while len(marks) > 1 and marks[1][0] <= now - start:
            marks.popleft()
        return now - self.queued_since >= start and backlog >= marks[0][1]

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
            weight = 1 - math.exp((self.load_at - now) / self.load_tau_s)
            self.load_avg += weight * (self.load_level - self.load_avg)
            self.busy_avg += weight * (self.busy_level - self.busy_avg)
            self.inflight_peak *= 1 - weight
        self.inflight_peak = max(self.inflight_peak, inflight)
        self.load_at, self.load_level = now, inflight
        self.busy_level = min(inflight, running * cfg.inputs_per_replica)
        self.service.observe(now, inflight, running * cfg.inputs_per_replica)
        in_window, window_changes = self._schedule_window(now)
        in_tail = now < self.schedule_tail_until
        # a scheduled run is one call in flight that keeps nothing warm once it ends
        if inflight - (1.0 if in_window or in_tail else 0.0) > 0:
            self.last_busy = now
            want = self._busy_target(now, running, starting, inflight) + cfg.buffer_replicas
        else:
            want, next_check = self._idle_target(now)
            if want and self.last_busy is not None and now - self.last_busy < cfg.downscale_delay:
                want += cfg.buffer_replicas
        if in_window:
            want = max(want, 1)
        next_check = min(next_check, window_changes, self.schedule_tail_until if in_tail else NEVER)
        want = max(cfg.min_replicas, min(cfg.max_replicas, want))
        if cfg.predictive and cfg.downscale_delay_s is None:
            self.levels.observe_wanted(now, want)
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
                return kept, min(next_check, until)
            return current, min(next_check, until)
        self._recent_max(now, want)
        return current, next_check

    def _recent_max(self, now: float, want: int) -> tuple[int, float]:
        """The most replicas wanted within the last downscale delay (each replica beyond the
        first is released once it has been unneeded that long), and when that next drops."""
        recent = self.recent_wants
        while recent and recent[-1][1] <= want:
            recent.pop()
        recent.append((now, want))
        delay = self.levels.release_delay_s()
        while len(recent) > 1 and recent[0][0] + delay <= now:
            recent.popleft()
        return recent[0][1], (recent[0][0] + delay if len(recent) > 1 else NEVER)

    # --- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "history": self.history.to_dict(),
            "last_busy": self.last_busy,
            "levels": self.levels.to_dict(),
            "measured_starts": self.measured_starts,
        }

    @classmethod
    def from_dict(cls, config: ScalingConfig, data: dict[str, Any] | None) -> "RaygpuPolicy":
        data = data or {}
        policy = cls(config, ArrivalHistory.from_dict(data.get("history")))
        policy.last_busy = data.get("last_busy")
        policy.levels.restore(data.get("levels"))
        for seconds in data.get("measured_starts") or []:
            if isinstance(seconds, (int, float)):
                policy.observe_start(float(seconds))
        return policy

    def describe(self) -> dict[str, Any]:
        return {
            "plan": asdict(self.plan),
            "period": self.history.period(),
            "gaps_seen": self.history.gaps_seen,
            "start_time_s": self.config.start_time_s,
            "release_delay_s": self.levels.release_delay_s(),
        }


def gateway_replicas(inflight_per_replica: list[float], target_inflight: float, max_replicas: int) -> int:
    """Gateway replicas needed for the in-flight calls they report: at least one, at most the cap."""
    total = sum(inflight_per_replica)
    return max(1, min(max_replicas, math.ceil(total / target_inflight) if total > 0 else 1))
