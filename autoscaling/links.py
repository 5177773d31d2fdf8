"""The Serve controller's links to raygpu's head actors, one per actor per controller process,
shared by every deployment's policy: the store (arrivals, schedules, learned state, scale events,
quiet reports) and the meter (measured replica starts). Their Ray calls run on threads of their
own; a policy's tick only reads in-memory structures under a lock."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import ray

from autoscaling.start_times import planned_start_s

logger = logging.getLogger("ray.serve.autoscaling.serve_adapter")

ARRIVAL_WAIT_S = 2.0  # each arrivals fetch waits up to this long for a new arrival (long poll)
SCHEDULES_REFRESH_S = 1.0  # how often the scheduler's plans (next due times) are read
START_TIMES_REFRESH_S = 15.0  # how often measured replica starts are read from the meter
MAX_PENDING_ARRIVALS = 100_000  # arrivals kept per function between two ticks of its policy
QUIET_FLUSH_S = 1.0  # quiet/busy changes of functions at zero reach the store within this long


class _StoreLink:
    """The controller-side link to the store, shared by every deployment's policy instance.

    Its Ray calls run on threads of its own: one keeps a long-poll fetch of new arrivals open, one
    reads the scheduler's plans every SCHEDULES_REFRESH_S, one sends what the policies record (scale
    events, learned state) and loads saved state. A policy's
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
        # "app/function" -> [next due time (wall clock), a run going]: replaced whole on each read
        self.schedules: dict[str, list[Any]] = {}
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
        threading.Thread(target=self._fetch_schedules, name="raygpu-schedules", daemon=True).start()
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

    def _fetch_schedules(self) -> None:
        while True:
            try:
                plans = ray.get(self.actor().schedule_plans.remote(), timeout=30.0)
                self.schedules = plans if isinstance(plans, dict) else {}
            except Exception as exc:  # the store restarting: the last plans stand meanwhile
                self._actor = None
                logger.debug("raygpu: reading schedule plans failed (%s); retrying", exc)
            time.sleep(SCHEDULES_REFRESH_S)

    def schedule(self, key: str) -> tuple[float, bool] | None:
        """The scheduler's plan for `key`: (next due time, wall clock; a run going), None when unscheduled."""
        self._start()
        plan = self.schedules.get(key)
        if not isinstance(plan, list) or len(plan) != 2 or not isinstance(plan[0], (int, float)):
            return None
        return float(plan[0]), bool(plan[1])

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

    module = importlib.import_module("autoscaling.links")
    return module._link(actor_name, namespace) if kind == "store" else module._meter_link(actor_name, namespace)
