"""Ray Serve adapter: the callable Serve's controller runs for every raygpu deployment.

Serve's own delays and factors are neutralised in the deployment config (see
`serve_autoscaling_config`), so `RaygpuPolicy` alone decides. Arrivals recorded by the gateway
reach the policy from the control-plane store through a shared, incremental, non-blocking reader:
this code runs on every tick of the Serve controller's loop and never waits on a remote call.
The learned state is saved to the store, so a redeploy or a controller restart resumes it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from typing import Any

import ray

from autoscaling.clock import SteadyClock
from autoscaling.decision import SEEN_TARGET_KEY, ServeDecision, ServeObservation, decide
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
MAX_PENDING_ARRIVALS = 100_000  # arrivals kept per function between two ticks of its policy
QUIET_FLUSH_S = 1.0  # quiet/busy changes of functions at zero reach the store within this long
WAKE_REPORT_TOLERANCE_S = 1.0  # a planned wake time that moved less than this is not reported again
# How long the replicas a deployment started with are held after one runs, for the calls that caused
# them to arrive (see RaygpuServePolicy._held).
INITIAL_HOLD_S = 5.0


class _StoreLink:
    """The controller-side link to the store, shared by every deployment's policy instance.

    Its Ray calls run on two threads of its own: one keeps a long-poll fetch of new arrivals open,
    one sends what the policies record (scale events, learned state) and loads saved state. A policy's
    tick only reads and appends to in-memory structures under a lock: Serve runs hundreds of policies
    per controller tick, and a Ray call from the controller's loop costs milliseconds there."""

    def __init__(self, actor_name: str, namespace: str):
        self.actor_name = actor_name
        self.namespace = namespace
        self._actor: Any = None
        self.cursor = -1
        self._lock = threading.Lock()
        self._pending: dict[str, list[float]] = {}
        self._loaded: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._outbox: queue.SimpleQueue[tuple[str, tuple[Any, ...]]] = queue.SimpleQueue()
        self._quiet_changes: dict[str, list[float | None] | None] = {}
        self._started = False

    def __reduce__(self) -> tuple[Any, ...]:
        # Serve pickles the policy (with its links) into each deployment's version: a link travels
        # as its actor's name and comes back as this process's one link to that actor (one pair
        # of threads per controller, however many deployments come and go).
        return process_link, ("store", self.actor_name, self.namespace)

    def _start(self) -> None:
        if not ray.is_initialized():
            return  # not in a Ray process (the controller always is): never start Ray from here
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._fetch_arrivals, name="raygpu-arrivals", daemon=True).start()
        threading.Thread(target=self._send, name="raygpu-store-outbox", daemon=True).start()

    def actor(self) -> Any:
        if self._actor is None:
            self._actor = ray.get_actor(self.actor_name, namespace=self.namespace)
        return self._actor

    def _fetch_arrivals(self) -> None:
        while True:
            try:
                cursor, new = ray.get(
                    self.actor().arrivals_after.remote(self.cursor, ARRIVAL_WAIT_S), timeout=ARRIVAL_WAIT_S + 30.0
                )
                self.cursor = cursor
                if new:
                    with self._lock:
                        for key, times in new.items():
                            kept = self._pending.setdefault(key, [])
                            kept.extend(times)
                            del kept[:-MAX_PENDING_ARRIVALS]  # a function no policy takes for any more
            except Exception as exc:  # the store restarting: look it up again
                self._actor = None
                logger.warning("raygpu: fetching arrivals failed (%s); retrying", exc)
                time.sleep(ARRIVAL_WAIT_S)

    def _send(self) -> None:
        while True:
            try:
                method, args = self._outbox.get(timeout=QUIET_FLUSH_S)
            except queue.Empty:
                self._flush_quiet()
                continue
            self._flush_quiet()
            try:
                result = getattr(self.actor(), method).remote(*args)
                if method == "load_policy_state":
                    loaded = ray.get(result, timeout=60.0)
                    with self._lock:
                        self._loaded[(args[0], args[1])] = loaded if isinstance(loaded, dict) else None
            except Exception as exc:
                self._actor = None
                logger.warning("raygpu: the control-plane store did not take %s (%s)", method, exc)
                if method == "load_policy_state":
                    with self._lock:
                        self._loaded[(args[0], args[1])] = None

    def _flush_quiet(self) -> None:
        if not self._quiet_changes:
            return
        with self._lock:
            changes, self._quiet_changes = self._quiet_changes, {}
        try:
            self.actor().record_quiet.remote(changes)
        except Exception as exc:
            self._actor = None
            logger.warning("raygpu: the control-plane store did not take quiet reports (%s)", exc)
            with self._lock:
                self._quiet_changes = {**changes, **self._quiet_changes}

    def report_quiet(self, key: str, report: list[float | None] | None) -> None:
        """`key` is quiet at zero ([since, wake_at], wall clock) or busy again (None); coalesced,
        sent within QUIET_FLUSH_S (the parker reads them from the store)."""
        if self._started:
            with self._lock:
                self._quiet_changes[key] = report

    def take(self, key: str) -> list[float]:
        """Arrivals of `key` fetched since the last take."""
        self._start()
        if not self._pending:
            return []
        with self._lock:
            return self._pending.pop(key, [])

    def record_scale_event(self, app: str, function: str, before: int, after: int) -> None:
        if self._started:
            self._outbox.put(("record_scale_events", ([(app, function, time.time(), before, after)],)))

    def save_state(self, app: str, function: str, state: dict[str, Any]) -> None:
        if self._started:
            self._outbox.put(("save_policy_state", (app, function, state)))

    def request_state(self, app: str, function: str) -> None:
        self._start()
        if not self._started:  # nothing to load from outside a Ray process
            with self._lock:
                self._loaded[(app, function)] = None
            return
        self._outbox.put(("load_policy_state", (app, function)))

    def loaded_state(self, app: str, function: str) -> tuple[bool, dict[str, Any] | None]:
        """(done, saved state) of a load asked for with request_state."""
        with self._lock:
            if (app, function) not in self._loaded:
                return False, None
            return True, self._loaded.pop((app, function))


class _MeterLink:
    """The controller-side link to the meter's record of replica starts, shared by every policy: a
    thread of its own reads the latest start of each function every START_TIMES_REFRESH_S."""

    def __init__(self, actor_name: str, namespace: str):
        self.actor_name = actor_name
        self.namespace = namespace
        self.latest: dict[str, tuple[Any, float]] = {}  # "app/function" -> ((replica, ts), seconds)
        self._lock = threading.Lock()
        self._started = False

    def __reduce__(self) -> tuple[Any, ...]:
        return process_link, ("meter", self.actor_name, self.namespace)

    def start(self) -> None:
        if not ray.is_initialized():
            return
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._refresh, name="raygpu-start-times", daemon=True).start()

    def _refresh(self) -> None:
        while True:
            try:
                meter = ray.get_actor(self.actor_name, namespace=self.namespace)
                starts = ray.get(meter.start_phases.remote(), timeout=60.0) or {}
                latest = {}
                for key, start in starts.items():
                    seconds = planned_start_s(start.get("phases", {})) if isinstance(start, dict) else None
                    if seconds is not None:
                        latest[key] = ((start.get("replica"), start.get("ts")), seconds)
                self.latest = latest  # replaced whole: readers see the old or the new one
            except Exception as exc:  # no meter (an unmetered cluster) or restarting: the guess stays
                logger.debug("raygpu: meter unreachable for start times (%s)", exc)
            time.sleep(START_TIMES_REFRESH_S)


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


def process_link(kind: str, actor_name: str, namespace: str) -> Any:
    """This process's one link of `kind` ("store" or "meter") to that actor, from this module as
    imported here: Serve may hand a policy over pickled by value, with private copies of this
    module's globals, and a link made from those would start threads of its own per deployment."""
    import importlib

    module = importlib.import_module("autoscaling.serve_adapter")
    return module._link(actor_name, namespace) if kind == "store" else module._meter_link(actor_name, namespace)


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
        if (
            not arrivals
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
