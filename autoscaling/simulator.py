"""Event-driven trace replay: the same policy code as the live adapter, asked at arrivals,
completions, replica-ready events and the times it asks for (no fixed fast tick).

Each function is replayed on its own replicas (FIFO queue, `inputs_per_replica` slots per replica,
replicas take `start_time_s` to become ready). Policies learn online: a policy sees an arrival
only when the replay reaches it.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoscaling.baselines import FixedKeepAlive, HybridHistogram, KnativeKPA, RayServeDefault
from autoscaling.policy import NEVER, RaygpuPolicy, ScalingConfig
from autoscaling.traces import FunctionTrace, Trace

READY, COMPLETE, WAKE = 0, 1, 2


@dataclass(frozen=True)
class SimulationParams:
    start_time_s: float = 30.0
    gpus_per_replica: int = 1
    inputs_per_replica: int = 1
    max_replicas: int = 1000
    usd_per_gpu_hour: float = 3.95
    idle_window_s: float = 60.0  # raygpu's scaledown_window (its fallback keep-alive)
    seed: int = 0


@dataclass
class FunctionResult:
    requests: int = 0
    cold_starts: int = 0
    busy_s: float = 0.0  # replica-seconds serving
    held_s: float = 0.0  # replica-seconds from start request to removal
    starting_s: float = 0.0  # replica-seconds spent starting
    latencies: list[float] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, replicas) when recorded


PolicyFactory = Callable[[ScalingConfig], Any]


def policy_factories() -> dict[str, PolicyFactory]:
    return {
        "raygpu": lambda c: RaygpuPolicy(c),
        "fixed_60s": lambda c: FixedKeepAlive(c, 60.0, "fixed_60s"),
        "fixed_600s": lambda c: FixedKeepAlive(c, 600.0, "fixed_600s"),
        "ray_serve_default": RayServeDefault,
        "knative": KnativeKPA,
        "hybrid_histogram": HybridHistogram,
    }


def simulate_function(
    fn: FunctionTrace, policy: Any, params: SimulationParams, end_s: float, record_timeline: bool = False
) -> FunctionResult:
    result = FunctionResult(requests=len(fn.arrivals))
    arrivals, services = fn.arrivals, fn.service_s
    n = len(arrivals)
    start_time = params.start_time_s
    slots = params.inputs_per_replica
    heap: list[tuple[float, int, int, int]] = []
    seq = 0
    # replica id -> [state, started_at, ready_at, free_slots, draining]; state 0 starting, 1 ready
    replicas: dict[int, list] = {}
    next_id = 0
    starting_ids: list[int] = []
    free: list[int] = []  # ready replicas with a free slot (may hold stale ids; checked on use)
    ready_count = 0
    busy_slots = 0
    queue: deque[tuple[float, float, bool]] = deque()  # (arrival, service, cold)
    latencies = result.latencies
    pending_wake = NEVER
    i = 0
    now = 0.0
    busy_s = 0.0
    held_s = 0.0
    starting_s = 0.0
    cold = 0

    draining = 0

    def remove(rid: int, at: float) -> None:
        nonlocal held_s, starting_s, ready_count, draining
        rep = replicas.pop(rid)
        if rep[4]:
            draining -= 1
        held_s += at - rep[1]
        if rep[0] == 0:
            starting_s += at - rep[1]
        else:
            ready_count -= 1

    while True:
        next_arrival = arrivals[i] if i < n else NEVER
        next_event = heap[0][0] if heap else NEVER
        if next_arrival == NEVER and next_event == NEVER:
            break
        if next_arrival <= next_event:
            now = next_arrival
            policy.observe_arrival(now)
            if free:
                rid = free[-1]
                rep = replicas[rid]
                rep[3] -= 1
                if rep[3] == 0:
                    free.pop()
                busy_slots += 1
                busy_s += services[i]
                latencies.append(0.0)
                seq += 1
                heapq.heappush(heap, (now + services[i], seq, COMPLETE, rid))
            else:
                queue.append((now, services[i], True))
            i += 1
        else:
            at, _, kind, rid = heapq.heappop(heap)
            now = at
            if kind == WAKE:
                if at != pending_wake:
                    continue
                pending_wake = NEVER
            elif kind == READY:
                rep = replicas.get(rid)
                if rep is None or rep[0] != 0:
                    continue
                rep[0] = 1
                starting_ids.remove(rid)
                ready_count += 1
                starting_s += now - rep[1]
                free.append(rid)
            else:  # COMPLETE
                busy_slots -= 1
                rep = replicas.get(rid)
                if rep is not None:
                    if rep[4]:
                        rep[3] += 1
                        if rep[3] == slots:
                            remove(rid, now)
                    else:
                        rep[3] += 1
                        if rep[3] == 1:
                            free.append(rid)
            # dispatch queued requests onto free slots
            while queue and free:
                rid = free[-1]
                rep = replicas[rid]
                arrival, service, _ = queue.popleft()
                rep[3] -= 1
                if rep[3] == 0:
                    free.pop()
                busy_slots += 1
                busy_s += service
                latencies.append(now - arrival)
                if kind == READY:
                    cold += 1
                seq += 1
                heapq.heappush(heap, (now + service, seq, COMPLETE, rid))

        target, next_check = policy.decide(now, ready_count, len(starting_ids), busy_slots + len(queue))
        target = min(target, params.max_replicas)
        active = ready_count + len(starting_ids) - draining
        if target > active:
            for _ in range(target - active):
                rid = next_id
                next_id += 1
                replicas[rid] = [0, now, now + start_time, slots, False]
                starting_ids.append(rid)
                seq += 1
                heapq.heappush(heap, (now + start_time, seq, READY, rid))
        elif target < active:
            excess = active - target
            while excess and starting_ids:
                rid = starting_ids.pop()
                remove(rid, now)
                excess -= 1
            if excess:
                # idle ready replicas first, then drain busy ones (they finish in-flight calls)
                for rid in sorted(replicas, key=lambda r: replicas[r][3] == slots, reverse=True):
                    if not excess:
                        break
                    rep = replicas[rid]
                    if rep[0] != 1 or rep[4]:
                        continue
                    if rep[3] == slots:
                        remove(rid, now)
                    else:
                        rep[4] = True
                        draining += 1
                    excess -= 1
                free[:] = [r for r in free if r in replicas and not replicas[r][4]]
        if record_timeline:
            result.timeline.append((now, ready_count + len(starting_ids)))
        if next_check < pending_wake and next_check > now:
            pending_wake = next_check
            seq += 1
            heapq.heappush(heap, (next_check, seq, WAKE, -1))
        if i >= n and not queue and busy_slots == 0 and pending_wake == NEVER:
            break
    end = max(end_s, now)
    for rid in list(replicas):
        remove(rid, end)
    result.busy_s = busy_s
    result.held_s = held_s
    result.starting_s = starting_s
    result.cold_starts = cold
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def scaling_config(params: SimulationParams) -> ScalingConfig:
    return ScalingConfig(
        min_replicas=0,
        max_replicas=params.max_replicas,
        inputs_per_replica=params.inputs_per_replica,
        idle_window_s=params.idle_window_s,
        start_time_s=params.start_time_s,
    )


def simulate(
    trace: Trace,
    policies: list[str] | None = None,
    params: SimulationParams | None = None,
    timeline_function: str | None = None,
    extra_policies: dict[str, PolicyFactory] | None = None,
) -> dict[str, Any]:
    """Replay every function of `trace` under each policy (the known ones, plus `extra_policies`);
    metrics per policy plus the params."""
    params = params or SimulationParams()
    factories = {**policy_factories(), **(extra_policies or {})}
    names = policies or list(factories)
    unknown = [p for p in names if p not in factories]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known: {', '.join(factories)}")
    out: dict[str, Any] = {
        "params": {
            "trace": trace.path,
            "format": trace.format,
            "functions": len(trace.functions),
            "invocations": trace.invocations,
            "duration_s": trace.duration_s,
            "start_time_s": params.start_time_s,
            "gpus_per_replica": params.gpus_per_replica,
            "inputs_per_replica": params.inputs_per_replica,
            "usd_per_gpu_hour": params.usd_per_gpu_hour,
            "raygpu_idle_window_s": params.idle_window_s,
            "arrivals_within_minute": f"uniform random, seed {params.seed}" if trace.format == "azure2019" else "exact",
        },
        "policies": {},
        "timelines": {},
    }
    config = scaling_config(params)
    for name in names:
        started = time.perf_counter()
        requests = cold = 0
        busy = held = starting = 0.0
        latencies: list[float] = []
        for fn in trace.functions:
            if not fn.arrivals:
                continue
            record = timeline_function is not None and fn.name == timeline_function
            r = simulate_function(fn, factories[name](config), params, trace.duration_s, record_timeline=record)
            requests += r.requests
            cold += r.cold_starts
            busy += r.busy_s
            held += r.held_s
            starting += r.starting_s
            latencies.extend(r.latencies)
            if record:
                out["timelines"][name] = r.timeline
        gpus = params.gpus_per_replica
        idle = max(0.0, held - busy)
        out["policies"][name] = {
            "requests": requests,
            "cold_starts": cold,
            "cold_start_rate": cold / requests if requests else 0.0,
            "p50_added_latency_s": percentile(latencies, 50),
            "p99_added_latency_s": percentile(latencies, 99),
            "busy_gpu_seconds": busy * gpus,
            "idle_gpu_seconds": idle * gpus,
            "starting_gpu_seconds": starting * gpus,
            "cost_usd": held * gpus / 3600 * params.usd_per_gpu_hour,
            "replay_s": time.perf_counter() - started,
        }
    return out
