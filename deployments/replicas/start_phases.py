"""A replica start broken into phases, from the demand that caused it to its first response. No Ray."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoscaling.start_times import REPLICA_PHASES

# In order; a replica marks those it passes (a plain function has no weights or engine). A vLLM
# replica also marks its engine's: the engine-core process running (`engine_process`), weights
# loaded, KV cache allocated, warm-up done, and its first streamed token (`first_token`).
PHASES = REPLICA_PHASES
# Before the replica exists: the call that found no replica → the autoscaler's scale-up decision
# (detection) → the node registered, when one had to be launched (provision) → the replica's
# process start or its landing on a warm worker (scheduling). Provisioning is not billed.
TRIGGER_PHASES = ("detection", "provision", "scheduling")
# A node that registered at most this long before the replica's process started may have been
# launched for it, and a node launch takes at most this long: the scale-up decision is then looked
# for up to this long before the node's registration.
MAX_PROVISION_S = 900.0
# Serve's own 0→1 path (a call at zero) does not call the policy: the policy records that scale-up
# at its next tick, which can come after the replica started. Such a late record still counts.
LATE_RECORD_S = 120.0


@dataclass
class StartPhases:
    """Timestamps of one replica start. `process` runs from the worker process start to the
    replica's constructor (interpreter, Ray, Serve); each later phase ends at its mark."""

    process_start: float
    replica_init: float
    marks: dict[str, float] = field(default_factory=dict)
    report: Callable[[dict[str, float]], None] | None = None
    demand_at: float | None = None
    decided_at: float | None = None
    node_registered_at: float | None = None

    def set_trigger(self, demand_at: float | None, decided_at: float | None) -> None:
        """When the demand that started this replica arrived, and when the scale-up was decided."""
        self.demand_at, self.decided_at = demand_at, decided_at

    def mark(self, phase: str, at: float | None = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown start phase {phase!r}")
        if phase in self.marks:
            return
        self.marks[phase] = time.time() if at is None else at
        if self.report is not None and phase in ("ready", "first_response"):
            self.report(self.durations())

    def first_response(self) -> None:
        if "first_response" not in self.marks:
            self.mark("first_response")

    def durations(self) -> dict[str, float]:
        """Seconds per phase passed so far, each from the end of the phase before it."""
        out: dict[str, float] = {}
        if self.decided_at is not None:
            if self.demand_at is not None:
                out["detection"] = max(self.decided_at - self.demand_at, 0.0)
            scheduled_from = self.decided_at
            node = self.node_registered_at
            if node is not None and self.decided_at < node <= self.process_start:
                out["provision"] = node - self.decided_at
                scheduled_from = node
            out["scheduling"] = max(self.process_start - scheduled_from, 0.0)
        out["process"] = max(self.replica_init - self.process_start, 0.0)
        previous = self.replica_init
        for phase in PHASES[1:]:
            if phase in self.marks:
                out[phase] = max(self.marks[phase] - previous, 0.0)
                previous = self.marks[phase]
        return out

    def describe(self) -> str:
        return ", ".join(f"{p} {s * 1000:.0f} ms" for p, s in self.durations().items())


def trigger_of(
    last_scale_event: dict | None,
    arrivals: list[float],
    started_at: float,
    window_s: float = 30.0,
    node_registered_at: float | None = None,
) -> tuple[float | None, float | None]:
    """(demand, decision) behind a replica start at `started_at`: the autoscaler's last scale-up,
    when it came at most `window_s` before the start (before the node's registration, when the
    node registered shortly before the start: it may have been launched for this replica), and
    the last call recorded before that decision (None where there is none: a pre-warm has a
    decision but no call). A scale-up recorded after the start (Serve's own path for a call at
    zero, recorded at the policy's next tick) was decided when its call arrived."""
    event = last_scale_event
    if not event or event["to"] <= event["from"]:
        return None, None
    anchor, lookback = started_at, window_s
    if node_registered_at is not None and 0.0 <= started_at - node_registered_at <= MAX_PROVISION_S:
        anchor, lookback = node_registered_at, window_s + MAX_PROVISION_S
    if not anchor - lookback <= event["time"] <= started_at + LATE_RECORD_S:
        return None, None
    decided = event["time"]
    if decided > started_at:
        before = [t for t in arrivals if anchor - lookback <= t <= started_at]
        if not before or event["from"] != 0:
            return None, None
        return max(before), max(before)
    before = [t for t in arrivals if decided - window_s <= t <= decided]
    return (max(before) if before else None), decided


async def start_trigger(
    store: Any,
    app: str,
    function: str,
    started_at: float,
    window_s: float = 30.0,
    node_registered_at: float | None = None,
) -> tuple[float | None, float | None]:
    """`trigger_of` with the scale event and arrivals read from the control-plane store handle."""
    event = await store.last_scale_event.remote(app, function)
    if not event:
        return None, None
    launched = node_registered_at is not None and 0.0 <= started_at - node_registered_at <= MAX_PROVISION_S
    since = min(event["time"], started_at) - window_s - (MAX_PROVISION_S if launched else 0.0)
    arrivals = await store.arrivals.remote(app, function, since)
    return trigger_of(event, arrivals, started_at, window_s, node_registered_at)
