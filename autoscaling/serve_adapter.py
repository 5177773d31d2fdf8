"""Ray Serve adapter: the callable Serve's controller runs for every raygpu deployment.

Serve's own delays and factors are neutralised in the deployment config (see
`serve_autoscaling_config`), so `autoscaling.policy.decide` alone decides. The arrival history is
read from a cached snapshot of the control-plane store: this code runs ~9 times a second inside the
Serve controller and never blocks on a remote call.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import ray

from autoscaling.policy import Observation, PolicyState, ScalingLimits, decide, gateway_replicas

logger = logging.getLogger(__name__)

POLICY_IMPORT_PATH = "autoscaling.serve_adapter:RaygpuServePolicy"
GATEWAY_POLICY_IMPORT_PATH = "autoscaling.serve_adapter:GatewayPolicy"
GATEWAY_INFLIGHT_METRIC = "raygpu_gateway_inflight"
SNAPSHOT_MAX_AGE_S = 1.0
ARRIVAL_LOOKBACK_S = 3600.0


class CachedSnapshot:
    """Non-blocking reader: `get()` returns the latest fetched value and starts a refresh when stale."""

    def __init__(self, fetch: Callable[[], "ray.ObjectRef"], max_age_s: float, default: Any):
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._value = default
        self._fetched_at = float("-inf")
        self._inflight: "ray.ObjectRef | None" = None

    def get(self) -> Any:
        now = time.monotonic()
        if self._inflight is not None:
            ready, _ = ray.wait([self._inflight], timeout=0)
            if ready:
                try:
                    self._value = ray.get(self._inflight)
                    self._fetched_at = now
                except Exception as exc:  # keep serving the previous value; the next call retries
                    logger.warning("raygpu: store snapshot refresh failed: %s", exc)
                self._inflight = None
        if self._inflight is None and now - self._fetched_at > self._max_age_s:
            try:
                self._inflight = self._fetch()
            except Exception as exc:
                logger.warning("raygpu: cannot reach the control-plane store: %s", exc)
                self._inflight = None
        return self._value


class _StoreLink:
    """The controller-side link to the store, shared by every deployment's policy instance."""

    def __init__(self, actor_name: str, namespace: str):
        self.actor_name = actor_name
        self.namespace = namespace
        self._actor: Any = None
        self.last_arrivals = CachedSnapshot(self._fetch_last_arrivals, SNAPSHOT_MAX_AGE_S, default={})

    def actor(self) -> Any:
        if self._actor is None:
            self._actor = ray.get_actor(self.actor_name, namespace=self.namespace)
        return self._actor

    def _fetch_last_arrivals(self) -> "ray.ObjectRef":
        return self.actor().last_arrivals.remote(time.time() - ARRIVAL_LOOKBACK_S)

    def record_scale_event(self, app: str, function: str, before: int, after: int) -> None:
        try:
            self.actor().record_scale_events.remote([(app, function, time.time(), before, after)])
        except Exception as exc:
            logger.warning("raygpu: could not record a scale event: %s", exc)


_links: dict[tuple[str, str], _StoreLink] = {}


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
        min_replicas: int,
        max_replicas: int,
        buffer_replicas: int,
        inputs_per_replica: int,
        idle_window_s: float,
        store_actor: str,
        store_namespace: str,
    ):
        self.app = app
        self.function = function
        self.limits = ScalingLimits(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            buffer_replicas=buffer_replicas,
            inputs_per_replica=inputs_per_replica,
            idle_window_s=idle_window_s,
        )
        self.store = _link(store_actor, store_namespace)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        last_arrivals: dict[str, float] = self.store.last_arrivals.get()
        obs = Observation(
            now=time.time(),
            current_replicas=ctx.current_num_replicas,
            ongoing_requests=float(ctx.total_num_requests or 0.0),
            last_arrival=last_arrivals.get(f"{self.app}/{self.function}"),
        )
        state = PolicyState.from_dict(ctx.policy_state.get("raygpu"))
        decision = decide(self.limits, obs, state)
        seen_target = ctx.policy_state.get("raygpu_seen_target")
        if seen_target is not None and seen_target != ctx.target_num_replicas:
            # Serve's own 0→1 fast path changes the target without calling us: record it here.
            self.store.record_scale_event(self.app, self.function, seen_target, ctx.target_num_replicas)
        if decision.replicas != ctx.target_num_replicas:
            self.store.record_scale_event(self.app, self.function, ctx.target_num_replicas, decision.replicas)
        return decision.replicas, {
            "raygpu": decision.state.to_dict(),
            "raygpu_seen_target": decision.replicas,
        }


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
    min_replicas: int,
    max_replicas: int,
    buffer_replicas: int,
    inputs_per_replica: int,
    idle_window_s: float,
    store_actor: str,
    store_namespace: str,
    metrics_interval_s: float,
    look_back_period_s: float,
) -> dict[str, Any]:
    """The Serve `autoscaling_config` for one raygpu deployment: raygpu's policy decides alone."""
    return {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "initial_replicas": min_replicas,
        "target_ongoing_requests": inputs_per_replica,
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
                "min_replicas": min_replicas,
                "max_replicas": max_replicas,
                "buffer_replicas": buffer_replicas,
                "inputs_per_replica": inputs_per_replica,
                "idle_window_s": idle_window_s,
                "store_actor": store_actor,
                "store_namespace": store_namespace,
            },
        },
    }
