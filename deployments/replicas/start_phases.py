"""A replica start broken into phases, from the demand that caused it to its first response. No Ray."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# In order; a replica marks those it passes (a plain function has no weights or engine).
PHASES = ("process", "imports", "weights", "engine_init", "ready", "first_response")
# Before the replica exists: the call that found no replica → the autoscaler's scale-up decision
# (detection) → the replica's process start or its landing on a warm worker (scheduling).
TRIGGER_PHASES = ("detection", "scheduling")


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
            out["scheduling"] = max(self.process_start - self.decided_at, 0.0)
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
    last_scale_event: dict | None, arrivals: list[float], started_at: float, window_s: float = 30.0
) -> tuple[float | None, float | None]:
    """(demand, decision) behind a replica start at `started_at`: the autoscaler's last scale-up,
    when it came at most `window_s` before the start, and the last call recorded before that
    decision (None where there is none: a pre-warm has a decision but no call)."""
    event = last_scale_event
    if not event or event["to"] <= event["from"] or not started_at - window_s <= event["time"] <= started_at + 1.0:
        return None, None
    decided = event["time"]
    before = [t for t in arrivals if decided - window_s <= t <= decided]
    return (max(before) if before else None), decided


async def start_trigger(
    store: Any, app: str, function: str, started_at: float, window_s: float = 30.0
) -> tuple[float | None, float | None]:
    """`trigger_of` with the scale event and arrivals read from the control-plane store handle."""
    event = await store.last_scale_event.remote(app, function)
    if not event:
        return None, None
    arrivals = await store.arrivals.remote(app, function, event["time"] - window_s)
    return trigger_of(event, arrivals, started_at, window_s)
