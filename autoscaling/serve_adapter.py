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
from typing import Any

import ray

from autoscaling.clock import SteadyClock
from autoscaling.decision import SEEN_TARGET_KEY, ServeObservation, decide
from autoscaling.policy import RaygpuPolicy, ScalingConfig, gateway_replicas
from autoscaling.start_times import planned_start_s

logger = logging.getLogger(f"ray.serve.{__name__}")

POLICY_IMPORT_PATH = "autoscaling.serve_adapter:RaygpuServePolicy"
GATEWAY_POLICY_IMPORT_PATH = "autoscaling.serve_adapter:GatewayPolicy"
GATEWAY_INFLIGHT_METRIC = "raygpu_gateway_inflight"
ARRIVAL_WAIT_S = 2.0  # each arrivals fetch waits up to this long for a new arrival (long poll)
STATE_SAVE_INTERVAL_S = 10.0  # how often a policy's learned state is saved
POLICY_ERROR_LOG_INTERVAL_S = 60.0  # a failing policy is logged at most this often
START_TIMES_REFRESH_S = 15.0  # how often measured replica starts are read from the meter
# Serve calls every deployment's policy in one controller tick: the shared links look for news once
# per tick (calls closer than this are the same tick), not once per deployment.
SAME_TICK_S = 0.01


class _StoreLink:
    """The controller-side link to the store, shared by every deployment's policy instance."""

    def __init__(self, actor_name: str, namespace: str):
        self.actor_name = actor_name
        self.namespace = namespace
        self._actor: Any = None
        self.cursor = -1
        self.pending: dict[str, list[float]] = {}
        self._inflight: "ray.ObjectRef | None" = None
        self._polled_at = float("-inf")

    def actor(self) -> Any:
        if self._actor is None:
            self._actor = ray.get_actor(self.actor_name, namespace=self.namespace)
        return self._actor

    def _call(self, method: str, *args: Any) -> "ray.ObjectRef | None":
        try:
            return getattr(self.actor(), method).remote(*args)
        except Exception as exc:  # the store restarting: try again on a later call
            self._actor = None
            logger.warning("raygpu: control-plane store unreachable (%s)", exc)
            return None

    def poll(self) -> None:
        """Collect arrivals fetched since the last call and keep one long-poll fetch open (once
        per controller tick, whichever deployment's policy asks first)."""
        if time.monotonic() - self._polled_at < SAME_TICK_S:
            return
        self._polled_at = time.monotonic()
        if self._inflight is not None:
            ready, _ = ray.wait([self._inflight], timeout=0)
            if not ready:
                return
            try:
                self.cursor, new = ray.get(self._inflight)
                for key, times in new.items():
                    self.pending.setdefault(key, []).extend(times)
            except Exception as exc:
                logger.warning("raygpu: fetching arrivals failed (%s)", exc)
            self._inflight = None
        if self._inflight is None:
            self._inflight = self._call("arrivals_after", self.cursor, ARRIVAL_WAIT_S)

    def take(self, key: str) -> list[float]:
        return self.pending.pop(key, []) if self.pending else []

    def record_scale_event(self, app: str, function: str, before: int, after: int) -> None:
        self._call("record_scale_events", [(app, function, time.time(), before, after)])

    def save_state(self, app: str, function: str, state: dict[str, Any]) -> None:
        self._call("save_policy_state", app, function, state)

    def load_state(self, app: str, function: str) -> "ray.ObjectRef | None":
        return self._call("load_policy_state", app, function)


class _MeterLink:
    """The controller-side link to the meter's record of replica starts, shared by every policy:
    one non-blocking read of the latest start of each function every START_TIMES_REFRESH_S."""

    def __init__(self, actor_name: str, namespace: str):
        self.actor_name = actor_name
        self.namespace = namespace
        self._inflight: "ray.ObjectRef | None" = None
        self._asked_at = float("-inf")
        self._polled_at = float("-inf")
        self.latest: dict[str, tuple[Any, float]] = {}  # "app/function" -> ((replica, ts), seconds)

    def poll(self) -> None:
        if time.monotonic() - self._polled_at < SAME_TICK_S:
            return
        self._polled_at = time.monotonic()
        if self._inflight is not None:
            ready, _ = ray.wait([self._inflight], timeout=0)
            if not ready:
                return
            try:
                for key, start in (ray.get(self._inflight) or {}).items():
                    seconds = planned_start_s(start.get("phases", {})) if isinstance(start, dict) else None
                    if seconds is not None:
                        self.latest[key] = ((start.get("replica"), start.get("ts")), seconds)
            except Exception as exc:
                logger.warning("raygpu: reading measured replica starts failed (%s)", exc)
            self._inflight = None
        if time.monotonic() - self._asked_at >= START_TIMES_REFRESH_S:
            self._asked_at = time.monotonic()
            try:
                self._inflight = ray.get_actor(self.actor_name, namespace=self.namespace).start_phases.remote()
            except Exception as exc:  # no meter (an unmetered cluster) or restarting: the guess stays
                logger.debug("raygpu: meter unreachable for start times (%s)", exc)


_links: dict[tuple[str, str], _StoreLink] = {}
_meter_links: dict[tuple[str, str], _MeterLink] = {}


def _meter_link(actor_name: str, namespace: str) -> _MeterLink:
    key = (actor_name, namespace)
    if key not in _meter_links:
        _meter_links[key] = _MeterLink(actor_name, namespace)
    return _meter_links[key]


def _link(actor_name: str, namespace: str) -> _StoreLink:
    key = (actor_name, namespace)
    if key not in _links:
        _links[key] = _StoreLink(actor_name, namespace)
    return _links[key]


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
        self.store = _link(store_actor, store_namespace)
        self.meter = _meter_link(meter_actor, meter_namespace or store_namespace) if meter_actor else None
        self._start_seen: Any = None
        self._loading = self.store.load_state(app, function)
        self._saved_at = time.monotonic()
        self._learned = False  # learned something since the state was last saved
        self._next_check = float("-inf")  # when the policy next wants to be asked with nothing new
        self.clock = SteadyClock()
        self.failures = 0
        self._failure_logged_at = float("-inf")

    def _resume_learned_state(self) -> None:
        if self._loading is None:
            return
        ready, _ = ray.wait([self._loading], timeout=0)
        if not ready:
            return
        try:
            saved = ray.get(self._loading)
            if saved:
                seen = self.policy.history.last_arrival
                restored = RaygpuPolicy.from_dict(self.config, saved)
                if seen is not None:  # arrivals observed while the state was loading
                    restored.observe_arrival(seen)
                self.policy = restored
        except Exception as exc:
            logger.warning("raygpu: could not load the learned state of %s (%s)", self.key, exc)
        self._loading = None

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
        self.store.poll()
        self._resume_learned_state()
        arrivals = self.store.take(self.key)
        for t in arrivals:
            self.policy.observe_arrival(self.clock.arrival(t))
        if self.meter is not None:
            self.meter.poll()
            start = self.meter.latest.get(self.key)
            if start is not None and start[0] != self._start_seen:
                self._start_seen = start[0]
                self.policy.observe_start(start[1])
                self._learned = True
        inflight = float(ctx.total_num_requests or 0.0)
        now = self.clock.now()
        if (
            not arrivals
            and inflight == 0
            and ctx.current_num_replicas == ctx.target_num_replicas == 0
            and now < self._next_check
            and (ctx.policy_state or {}).get(SEEN_TARGET_KEY) == 0
        ):
            # At zero with nothing new: the policy already said when it next wants to be asked.
            return 0, ctx.policy_state
        observation = ServeObservation(
            running=ctx.current_num_replicas,
            target=ctx.target_num_replicas,
            inflight=inflight,
            policy_state=dict(ctx.policy_state or {}),
        )
        decision = decide(self.policy, observation, now)
        self._next_check = decision.next_check
        self._learned = self._learned or bool(arrivals)
        for before, after in decision.scale_events:
            self.store.record_scale_event(self.app, self.function, before, after)
        if self._learned and self._loading is None and time.monotonic() - self._saved_at >= STATE_SAVE_INTERVAL_S:
            self._saved_at = time.monotonic()
            self._learned = False
            self.store.save_state(self.app, self.function, self.policy.to_dict())
        return decision.replicas, decision.policy_state


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
