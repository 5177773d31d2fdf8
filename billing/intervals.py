"""Replica lifecycle events → closed, immutable billing intervals by phase, and their cost. No Ray.

Phases: cold_start (requested or started → ready), active (serving at least one call), idle
(ready, serving nothing). Intervals are split at UTC day boundaries and at price-version changes,
so each piece keeps the price that applied when it ran. A replica with no stop event is closed
at its last event or heartbeat.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from billing.prices import PriceTable, exact_cost_usd, round_usd, to_decimal_seconds

EventKind = Literal["requested", "started", "ready", "serving", "idle", "stopped", "heartbeat"]
Phase = Literal["cold_start", "active", "idle"]
PHASES: tuple[Phase, ...] = ("cold_start", "active", "idle")
# Same-timestamp events apply in lifecycle order.
KIND_ORDER = {"requested": 0, "started": 1, "ready": 2, "serving": 3, "idle": 4, "heartbeat": 5, "stopped": 6}


class LifecycleEvent(BaseModel):
    id: str
    app: str
    function: str
    replica: str
    kind: EventKind
    ts: float
    gpus: float = Field(default=0.0, ge=0)
    accelerator: str | None = None


class Interval(BaseModel):
    app: str
    function: str
    replica: str
    phase: Phase
    start: float
    end: float
    gpus: float
    accelerator: str | None = None
    price_version: int | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


def day_boundaries(start: float, end: float) -> list[float]:
    out = []
    day = dt.datetime.fromtimestamp(start, dt.UTC).date() + dt.timedelta(days=1)
    while True:
        boundary = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
        if boundary >= end:
            return out
        out.append(boundary)
        day += dt.timedelta(days=1)


class TimelineState(BaseModel):
    """Where a replica's timeline stood after the events rolled up so far (a live replica's
    checkpoint): its open phase and since when, its GPUs, and its last sign of life."""

    phase: Phase | None
    since: float
    gpus: float
    accelerator: str | None
    last_ts: float | None


class ReplicaTimeline:
    """One replica's phase state machine. Feed it events in (ts, lifecycle) order; it returns the
    intervals each event closes, and `open_interval` is what a replica that never sent its stop
    event is billed for: its current phase up to the last sign of life."""

    def __init__(self, app: str, function: str, replica: str, state: TimelineState | None = None):
        self.app, self.function, self.replica = app, function, replica
        self.gpus = 0.0
        self.accelerator: str | None = None
        self.phase: Phase | None = None
        self.since = 0.0
        self.last_ts: float | None = None
        self.stopped = False
        if state is not None:
            self.phase, self.since, self.gpus = state.phase, state.since, state.gpus
            self.accelerator, self.last_ts = state.accelerator, state.last_ts

    def state(self) -> TimelineState:
        return TimelineState(
            phase=self.phase, since=self.since, gpus=self.gpus, accelerator=self.accelerator, last_ts=self.last_ts
        )

    def _interval(self, end: float) -> Interval | None:
        if self.phase is None or end <= self.since:
            return None
        return Interval(
            app=self.app,
            function=self.function,
            replica=self.replica,
            phase=self.phase,
            start=self.since,
            end=end,
            gpus=self.gpus,
            accelerator=self.accelerator,
        )

    def _move(self, at: float, phase: Phase | None) -> list[Interval]:
        closed = self._interval(at)
        self.phase, self.since = phase, at
        return [closed] if closed else []

    def apply(self, e: LifecycleEvent) -> list[Interval]:
        """Apply one event; return the intervals it closed."""
        if self.stopped:
            return []
        self.gpus = max(self.gpus, e.gpus)
        self.accelerator = self.accelerator or e.accelerator
        self.last_ts = e.ts if self.last_ts is None else max(self.last_ts, e.ts)
        if e.kind in ("requested", "started"):
            if self.phase is None:
                self.phase, self.since = "cold_start", e.ts
        elif e.kind == "ready":
            if self.phase in (None, "cold_start"):
                return self._move(e.ts, "idle")
        elif e.kind == "serving":
            if self.phase == "idle":
                return self._move(e.ts, "active")
        elif e.kind == "idle":
            if self.phase == "active":
                return self._move(e.ts, "idle")
        elif e.kind == "stopped":
            self.stopped = True
            return self._move(e.ts, None)
        return []

    def open_interval(self) -> Interval | None:
        """The unclosed phase, up to the last event or heartbeat (None once stopped)."""
        if self.stopped or self.last_ts is None:
            return None
        return self._interval(self.last_ts)


def replica_intervals(
    events: Iterable[LifecycleEvent], resumed: dict[tuple[str, str, str], TimelineState] | None = None
) -> list[Interval]:
    """Closed phase intervals of every replica in `events` (duplicates and disorder tolerated);
    a replica in `resumed` continues from that state (its earlier events were rolled up)."""
    resumed = resumed or {}
    unique = {e.id: e for e in events}
    by_replica: dict[tuple[str, str, str], list[LifecycleEvent]] = defaultdict(list)
    for e in unique.values():
        by_replica[(e.app, e.function, e.replica)].append(e)
    for key in resumed:
        by_replica.setdefault(key, [])
    intervals: list[Interval] = []
    for (app, function, replica), evs in by_replica.items():
        timeline = ReplicaTimeline(app, function, replica, resumed.get((app, function, replica)))
        for e in sorted(evs, key=event_order):
            intervals.extend(timeline.apply(e))
        last = timeline.open_interval()  # died without a stop: bill to the last sign of life
        if last is not None:
            intervals.append(last)
    return intervals


def event_order(e: LifecycleEvent) -> tuple[float, int]:
    return e.ts, KIND_ORDER[e.kind]


def split_intervals(intervals: Iterable[Interval], prices: PriceTable) -> list[Interval]:
    """Cut at UTC midnights and price-version changes; stamp each piece with its price version."""
    pieces = []
    for iv in intervals:
        cuts = sorted(set(day_boundaries(iv.start, iv.end) + prices.boundaries(iv.start, iv.end)))
        edges = [iv.start, *cuts, iv.end]
        for a, b in zip(edges, edges[1:]):
            pieces.append(iv.model_copy(update={"start": a, "end": b, "price_version": prices.version_at(a).version}))
    return pieces


class BillLine(BaseModel):
    """GPU-seconds by phase and cost of one group (a function, or a function on one day)."""

    app: str
    function: str
    day: str | None = None
    gpu_seconds: dict[str, Decimal] = Field(default_factory=lambda: {p: Decimal(0) for p in PHASES})
    cost_usd: dict[str, Decimal] = Field(default_factory=lambda: {p: Decimal(0) for p in PHASES})
    replica_starts: int = 0

    @property
    def total_gpu_seconds(self) -> Decimal:
        return sum(self.gpu_seconds.values(), Decimal(0))

    @property
    def total_cost_usd(self) -> Decimal:
        return sum(self.cost_usd.values(), Decimal(0))


def bill(
    intervals: Iterable[Interval], prices: PriceTable, *, by_day: bool = False, min_increment_s: Decimal | None = None
) -> list[BillLine]:
    """Per-second bill. A replica start shorter than the minimum increment is charged the minimum
    (the difference counts as idle time at the replica's first price)."""
    minimum = prices.min_increment_s if min_increment_s is None else min_increment_s
    pieces = split_intervals(intervals, prices)
    lines: dict[tuple[str, str, str | None], BillLine] = {}
    per_replica: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    first_piece: dict[tuple[str, str, str], Interval] = {}
    versions = {v.version: v for v in prices.versions}
    for piece in sorted(pieces, key=lambda p: p.start):
        day = dt.datetime.fromtimestamp(piece.start, dt.UTC).date().isoformat() if by_day else None
        line = lines.setdefault(
            (piece.app, piece.function, day), BillLine(app=piece.app, function=piece.function, day=day)
        )
        gpu_s = to_decimal_seconds(piece.seconds) * Decimal(repr(piece.gpus))
        rate = prices.rate(versions[piece.price_version], piece.accelerator)
        line.gpu_seconds[piece.phase] += gpu_s
        line.cost_usd[piece.phase] += exact_cost_usd(gpu_s, rate)
        key = (piece.app, piece.function, piece.replica)
        per_replica[key] += to_decimal_seconds(piece.seconds)
        first_piece.setdefault(key, piece)
    for key, seconds in per_replica.items():
        piece = first_piece[key]
        day = dt.datetime.fromtimestamp(piece.start, dt.UTC).date().isoformat() if by_day else None
        line = lines[(piece.app, piece.function, day)]
        line.replica_starts += 1
        if seconds < minimum:
            extra = (minimum - seconds) * Decimal(repr(piece.gpus))
            line.gpu_seconds["idle"] += extra
            line.cost_usd["idle"] += exact_cost_usd(
                extra, prices.rate(versions[piece.price_version], piece.accelerator)
            )
    for line in lines.values():
        line.cost_usd = {phase: round_usd(amount) for phase, amount in line.cost_usd.items()}
    return sorted(lines.values(), key=lambda line: (line.app, line.function, line.day or ""))
