"""Prometheus metrics of the meter, kept from the same events as the ledger. No Ray.

`UsageMetrics` is fed every event and request record the ledger accepted for the first time (so
resends never double-count) and, at start, the whole ledger (so a restarted meter exports the same
totals). GPU-seconds and replica counts are computed at scrape time from each live replica's
timeline, so they agree with `raygpu bill` to the last heartbeat.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from billing.intervals import PHASES, Interval, LifecycleEvent, ReplicaTimeline, TimelineState, event_order
from billing.totals import COLD_START_BUCKETS_S, REQUEST_BUCKETS_S

# A replica silent for this long is gone (it died without a stop event): it leaves the replica
# gauge and its time is closed at its last heartbeat, as the bill does.
LOST_AFTER_S = 10.0
REPLICA_STATES = {"cold_start": "starting", "idle": "idle", "active": "active"}


class UsageMetrics(Collector):
    """The meter's Prometheus series, in a private registry."""

    def __init__(self, lost_after_s: float = LOST_AFTER_S):
        self.lost_after_s = lost_after_s
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._live: dict[tuple[str, str, str], ReplicaTimeline] = {}
        self._closed_gpu_s: dict[tuple[str, str, str, str], float] = defaultdict(float)
        self._functions: set[tuple[str, str]] = set()
        self.requests = Counter(
            "raygpu_requests",
            "Calls answered by raygpu replicas.",
            ["app", "function", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "raygpu_request_duration_seconds",
            "Time a replica spent on a call.",
            ["app", "function"],
            buckets=REQUEST_BUCKETS_S,
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "raygpu_cold_starts", "Replica starts that reached ready.", ["app", "function"], registry=self.registry
        )
        self.cold_start_duration = Histogram(
            "raygpu_cold_start_duration_seconds",
            "Replica start: process start to ready.",
            ["app", "function"],
            buckets=COLD_START_BUCKETS_S,
            registry=self.registry,
        )
        self.start_phase_duration = Histogram(
            "raygpu_cold_start_phase_seconds",
            "Replica start by phase (process, imports, engine_process, weights, kv_cache, warmup, engine_init, ready, "
            "first_token, first_response).",
            ["app", "function", "phase"],
            buckets=COLD_START_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(self)

    def resume(self, states: dict[tuple[str, str, str], TimelineState]) -> None:
        """Continue live replicas from the state the ledger checkpointed (their earlier events are
        rolled up into the totals `restore` loaded)."""
        with self._lock:
            for key, state in states.items():
                self._functions.add((key[0], key[1]))
                self._live[key] = ReplicaTimeline(*key, state)

    def observe_events(self, events: Iterable[LifecycleEvent]) -> None:
        with self._lock:
            for e in sorted(events, key=event_order):
                key = (e.app, e.function, e.replica)
                self._functions.add((e.app, e.function))
                timeline = self._live.get(key)
                if timeline is None:
                    timeline = self._live[key] = ReplicaTimeline(*key)
                for interval in timeline.apply(e):
                    self._close(interval)
                if timeline.stopped:
                    del self._live[key]

    def observe_requests(self, requests: Iterable[dict[str, Any]]) -> None:
        for r in requests:
            self.requests.labels(r["app"], r["function"], str(r["status"])).inc()
            self.request_duration.labels(r["app"], r["function"]).observe(max(float(r["latency_s"]), 0.0))

    def observe_start_phases(self, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self.start_phase_duration.labels(r["app"], r["function"], r["phase"]).observe(max(float(r["seconds"]), 0.0))

    def restore(self, totals: Iterable[tuple[str, tuple[str, ...], float, list[int] | None]]) -> None:
        """Start from the totals the ledger keeps (what rolled-up replicas and every request and
        start phase add up to), instead of replaying the history behind them."""
        histograms = {
            "request_duration": self.request_duration,
            "cold_start_duration": self.cold_start_duration,
            "start_phase": self.start_phase_duration,
        }
        counters = {"requests": self.requests, "cold_starts": self.cold_starts}
        with self._lock:
            for metric, labels, value, buckets in totals:
                if metric == "gpu_seconds":
                    app, function, accelerator, phase = labels
                    self._closed_gpu_s[(app, function, accelerator, phase)] += value
                    self._functions.add((app, function))
                elif metric in counters:
                    counters[metric].labels(*labels).inc(value)
                elif metric in histograms and buckets is not None:
                    child = histograms[metric].labels(*labels)
                    for bucket, count in zip(child._buckets, buckets):
                        bucket.inc(count)
                    child._sum.inc(value)

    def _close(self, interval: Interval) -> None:
        key = (interval.app, interval.function, interval.accelerator or "", interval.phase)
        self._closed_gpu_s[key] += interval.seconds * interval.gpus
        if interval.phase == "cold_start":
            self.cold_starts.labels(interval.app, interval.function).inc()
            self.cold_start_duration.labels(interval.app, interval.function).observe(interval.seconds)

    def _forget_lost(self, now: float) -> None:
        for key, timeline in list(self._live.items()):
            if timeline.last_ts is not None and now - timeline.last_ts > self.lost_after_s:
                last = timeline.open_interval()
                if last is not None:
                    self._close(last)
                del self._live[key]

    def collect(self) -> Iterator[Any]:
        gpu_seconds = CounterMetricFamily(
            "raygpu_gpu_seconds",
            "GPU-seconds held by replicas, by phase.",
            labels=["app", "function", "accelerator", "phase"],
        )
        replicas = GaugeMetricFamily("raygpu_replicas", "Live replicas by state.", labels=["app", "function", "state"])
        with self._lock:
            self._forget_lost(time.time())
            totals = dict(self._closed_gpu_s)
            counts = {
                (app, function, state): 0 for app, function in self._functions for state in REPLICA_STATES.values()
            }
            for (app, function, _), timeline in self._live.items():
                if timeline.phase is not None:
                    counts[(app, function, REPLICA_STATES[timeline.phase])] += 1
                current = timeline.open_interval()
                if current is not None:
                    key = (app, function, current.accelerator or "", current.phase)
                    totals[key] = totals.get(key, 0.0) + current.seconds * current.gpus
        for app, function, accelerator, _ in list(totals):
            for phase in PHASES:  # every phase of a known function, zeros included, so rates are defined
                totals.setdefault((app, function, accelerator, phase), 0.0)
        for (app, function, accelerator, phase), value in sorted(totals.items()):
            gpu_seconds.add_metric([app, function, accelerator, phase], value)
        for (app, function, state), value in sorted(counts.items()):
            replicas.add_metric([app, function, state], value)
        yield gpu_seconds
        yield replicas

    def describe(self) -> Iterator[Any]:
        yield CounterMetricFamily("raygpu_gpu_seconds", "", labels=["app", "function", "accelerator", "phase"])
        yield GaugeMetricFamily("raygpu_replicas", "", labels=["app", "function", "state"])

    def serve(self, port: int, host: str = "0.0.0.0") -> Any:
        """Expose /metrics on host:port in a background thread."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
