"""Ray Serve adapter: the callable Serve's controller runs for every raygpu deployment.

Serve's own delays and factors are neutralised in the deployment config (see
`serve_autoscaling_config`), so `RaygpuPolicy` alone decides. Arrivals recorded by the gateway
reach the policy from the control-plane store through a shared, incremental, non-blocking reader:
this code runs on every tick of the Serve controller's loop and never waits on a remote call.
The learned state is saved to the store, so a redeploy or a controller restart resumes it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from autoscaling.clock import SteadyClock
from autoscaling.decision import SEEN_TARGET_KEY, ServeDecision, ServeObservation, decide
from autoscaling.links import process_link
from autoscaling.policy import RaygpuPolicy, ScalingConfig, ScheduledRun, gateway_replicas

logger = logging.getLogger(f"ray.serve.{__name__}")

POLICY_IMPORT_PATH = "autoscaling.serve_adapter:RaygpuServePolicy"
GATEWAY_POLICY_IMPORT_PATH = "autoscaling.serve_adapter:GatewayPolicy"
GATEWAY_INFLIGHT_METRIC = "raygpu_gateway_inflight"
STATE_SAVE_INTERVAL_S = 10.0  # how often a policy's learned state is saved
POLICY_ERROR_LOG_INTERVAL_S = 60.0  # a failing policy is logged at most this often
WAKE_REPORT_TOLERANCE_S = 1.0  # a planned wake time that moved less than this is not reported again
# How long the replicas a deployment started with are held after one runs, for the calls that caused
# them to arrive (see RaygpuServePolicy._held).
INITIAL_HOLD_S = 5.0


class RaygpuServePolicy:
    """Instantiated once per deployment by Serve with `policy_kwargs`; called with a context."""

    def __init__(
        self,
        app: str,
        function: str,
        store_actor: str,
        store_namespace: str,
        meter_actor: str | None = None,
        meter_namespace: str | None = None,
        **config: Any,
    ):
        self.app = app
        self.function = function
        self.key = f"{app}/{function}"
        self.config = ScalingConfig(**config)
        self.policy = RaygpuPolicy(self.config)
        self.store = process_link("store", store_actor, store_namespace)
        self.meter = process_link("meter", meter_actor, meter_namespace or store_namespace) if meter_actor else None
        self._start_seen: Any = None
        self._loading = True
        self.store.request_state(app, function)
        if self.meter is not None:
            self.meter.start()
        self._saved_at = time.monotonic()
        self._learned = False  # learned something since the state was last saved
        self._next_check = float("-inf")  # when the policy next wants to be asked with nothing new
        self.clock = SteadyClock()
        self._quiet_since: float | None = None  # wall clock; when the function last came to rest at zero
        self._reported_wake: float | None = None
        # The first decision reports either way: a report left by this function's previous policy
        # (an earlier version, a restarted controller) must not stand for this one.
        self._rest_reported = False
        # Replicas the deployment started with (`initial_replicas`: a function brought back for a
        # call, a version taking over a running one) are kept until one runs and its first calls
        # had INITIAL_HOLD_S to arrive: the call that caused them is not in flight yet.
        self._hold: int | None = None
        self._hold_until: float | None = None
        self.failures = 0
        self._failure_logged_at = float("-inf")
        self._schedule: tuple[float, bool] | None = None  # the scheduler's plan last applied

    def _resume_learned_state(self) -> None:
        if not self._loading:
            return
        done, saved = self.store.loaded_state(self.app, self.function)
        if not done:
            return
        self._loading = False
        if not saved:
            return
        try:
            seen = self.policy.history.last_arrival
            restored = RaygpuPolicy.from_dict(self.config, saved)
            if seen is not None:  # arrivals observed while the state was loading
                restored.observe_arrival(seen)
            self.policy = restored
        except Exception as exc:
            logger.warning("raygpu: could not load the learned state of %s (%s)", self.key, exc)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """Never raises: Serve runs every deployment's policy in one controller tick, and an
        exception would stop the others. A failing policy keeps its function where it is."""
        try:
            return self._decide(ctx)
        except Exception:
            self.failures += 1
            if time.monotonic() - self._failure_logged_at >= POLICY_ERROR_LOG_INTERVAL_S:
                self._failure_logged_at = time.monotonic()
                logger.exception(
                    "raygpu: the autoscaling policy of %s failed (%d time(s) so far); it stays at %d replica(s)",
                    self.key,
                    self.failures,
                    ctx.target_num_replicas,
                )
            return int(ctx.target_num_replicas), dict(ctx.policy_state or {})

    def _decide(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        self._resume_learned_state()
        arrivals = self.store.take(self.key)
        for t in arrivals:
            self.policy.observe_arrival(self.clock.arrival(t))
        if self.meter is not None:
            start = self.meter.latest.get(self.key)
            if start is not None and start[0] != self._start_seen:
                self._start_seen = start[0]
                self.policy.observe_start(start[1])
                self._learned = True
        inflight = float(ctx.total_num_requests or 0.0)
        now = self.clock.now()
        schedule = self.store.schedule(self.key)
        schedule_moved = schedule != self._schedule
        self._schedule = schedule
        self.policy.plan_schedule(
            None if schedule is None else ScheduledRun(schedule[0] + (now - time.time()), schedule[1]), now
        )
        if (
            not arrivals
            and not schedule_moved
            and inflight == 0
            and ctx.current_num_replicas == ctx.target_num_replicas == 0
            and now < self._next_check
            and (ctx.policy_state or {}).get(SEEN_TARGET_KEY) == 0
            and self._quiet_since is not None
        ):
            # At zero with nothing new, its rest reported: the policy already said when it next
            # wants to be asked.
            return 0, ctx.policy_state
        observation = ServeObservation(
            running=ctx.current_num_replicas,
            target=ctx.target_num_replicas,
            inflight=inflight,
            policy_state=dict(ctx.policy_state or {}),
        )
        decision = decide(self.policy, observation, now)
        decision = self._held(decision, ctx, now)
        self._next_check = decision.next_check
        self._learned = self._learned or bool(arrivals)
        for before, after in decision.scale_events:
            self.store.record_scale_event(self.app, self.function, before, after)
        quiet = decision.replicas == 0 and ctx.current_num_replicas == 0 and inflight == 0 and not arrivals
        due = time.monotonic() - self._saved_at >= STATE_SAVE_INTERVAL_S
        if self._learned and not self._loading and (due or quiet):  # saved before it may be parked
            self._saved_at = time.monotonic()
            self._learned = False
            self.store.save_state(self.app, self.function, self.policy.to_dict())
        self._report_quiet(quiet, decision.next_check - now)
        return decision.replicas, decision.policy_state

    def _held(self, decision: ServeDecision, ctx: Any, now: float) -> ServeDecision:
        """No fewer replicas than the deployment started with until one of them runs and then
        for INITIAL_HOLD_S (set on the first tick that finds replicas starting and none running)."""
        if self._hold is None and self._hold_until is None:
            starting = int(ctx.target_num_replicas or 0)
            self._hold = starting if starting > 0 and not ctx.current_num_replicas else 0
        if not self._hold:
            return decision
        if ctx.current_num_replicas and self._hold_until is None:
            self._hold_until = now + INITIAL_HOLD_S
        if self._hold_until is not None and now >= self._hold_until:
            self._hold = 0
            return decision
        if decision.replicas >= self._hold:
            return decision
        dropped = (int(ctx.target_num_replicas or 0), decision.replicas)
        return replace(
            decision,
            replicas=self._hold,
            scale_events=[e for e in decision.scale_events if e != dropped],
            policy_state={**decision.policy_state, SEEN_TARGET_KEY: self._hold},
            next_check=min(decision.next_check, now + 0.5),
        )

    def _report_quiet(self, quiet: bool, wake_in_s: float) -> None:
        """Tell the parker when the function comes to rest at zero (and when its plan next wants a
        replica) and when it is busy again; only changes are sent."""
        if not quiet:
            if self._quiet_since is not None or not self._rest_reported:
                self._quiet_since = None
                self._rest_reported = True
                self.store.report_quiet(self.key, None)
            return
        wall = time.time()
        wake_at = wall + wake_in_s if wake_in_s < 1e12 else None
        if self._quiet_since is None:
            self._quiet_since = wall
        elif (wake_at is None) == (self._reported_wake is None) and (
            wake_at is None or abs(wake_at - self._reported_wake) < WAKE_REPORT_TOLERANCE_S  # type: ignore[operator]
        ):
            return
        self._reported_wake = wake_at
        self._rest_reported = True
        self.store.report_quiet(self.key, [self._quiet_since, wake_at])


class GatewayPolicy:
    """Scales the gateway on the in-flight calls its replicas report (its HTTP bypasses Serve's
    proxy, so Serve's own request counts never see that load)."""

    def __init__(self, target_inflight: float, max_replicas: int):
        self.target_inflight = target_inflight
        self.max_replicas = max_replicas

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        reported = (ctx.aggregated_metrics or {}).get(GATEWAY_INFLIGHT_METRIC, {})
        return gateway_replicas(list(reported.values()), self.target_inflight, self.max_replicas), {}


def gateway_autoscaling_config(target_inflight: float, max_replicas: int) -> dict[str, Any]:
    return {
        "min_replicas": 1,
        "max_replicas": max_replicas,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": 120.0,
        "metrics_interval_s": 1.0,
        "look_back_period_s": 10.0,
        "policy": {
            "policy_function": GATEWAY_POLICY_IMPORT_PATH,
            "policy_kwargs": {"target_inflight": target_inflight, "max_replicas": max_replicas},
        },
    }


def serve_autoscaling_config(
    *,
    app: str,
    function: str,
    store_actor: str,
    store_namespace: str,
    metrics_interval_s: float,
    meter_actor: str | None = None,
    meter_namespace: str | None = None,
    look_back_period_s: float,
    initial_replicas: int | None = None,
    **scaling: Any,
) -> dict[str, Any]:
    """The Serve `autoscaling_config` for one raygpu deployment: raygpu's policy decides alone.

    `scaling` holds ScalingConfig fields (min_replicas, max_replicas, buffer_replicas,
    inputs_per_replica, idle_window_s, start_time_s, ...). `initial_replicas` (default: the
    minimum) is how many replicas a new version starts with, e.g. as many as the version it
    replaces runs."""
    config = ScalingConfig(**scaling)
    initial = config.min_replicas if initial_replicas is None else initial_replicas
    return {
        "min_replicas": config.min_replicas,
        "max_replicas": config.max_replicas,
        "initial_replicas": min(max(initial, config.min_replicas), config.max_replicas),
        "target_ongoing_requests": config.inputs_per_replica,
        "metrics_interval_s": metrics_interval_s,
        "look_back_period_s": look_back_period_s,
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "downscale_to_zero_delay_s": 0.0,
        "policy": {
            "policy_function": POLICY_IMPORT_PATH,
            "policy_kwargs": {
                "app": app,
                "function": function,
                "store_actor": store_actor,
                "store_namespace": store_namespace,
                **({"meter_actor": meter_actor, "meter_namespace": meter_namespace} if meter_actor else {}),
                **scaling,
            },
        },
    }
