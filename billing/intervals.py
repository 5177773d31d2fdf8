"""Replica lifecycle events → closed, immutable billing intervals by phase, and their cost. No Ray.

Phases: cold_start (requested or started → ready), active (serving at least one call), idle
(ready, serving nothing). Intervals are split at UTC day boundaries and at price-version changes,
so each piece keeps the price that applied when it ran. A replica with no stop event is closed
at its last event or heartbeat.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import Iterable, Literal

from pydantic import BaseModel, Field

from billing.prices import PriceTable, cost_usd, to_decimal_seconds

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
    day = dt.datetime.fromtimestamp(start, dt.timezone.utc).date() + dt.timedelta(days=1)
    while True:
        boundary = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()
        if boundary >= end:
            return out
        out.append(boundary)
        day += dt.timedelta(days=1)


def replica_intervals(events: Iterable[LifecycleEvent]) -> list[Interval]:
    """Closed phase intervals of every replica in `events` (duplicates and disorder tolerated)."""
    unique = {e.id: e for e in events}
    by_replica: dict[tuple[str, str, str], list[LifecycleEvent]] = defaultdict(list)
    for e in unique.values():
        by_replica[(e.app, e.function, e.replica)].append(e)
    intervals: list[Interval] = []
    for (app, function, replica), evs in by_replica.items():
        evs.sort(key=lambda e: (e.ts, KIND_ORDER[e.kind]))
        gpus = max((e.gpus for e in evs), default=0.0)
        accelerator = next((e.accelerator for e in evs if e.accelerator), None)
        phase: Phase | None = None
        since = 0.0

        def close(at: float) -> None:
            if phase is not None and at > since:
                intervals.append(Interval(app=app, function=function, replica=replica, phase=phase,
                                          start=since, end=at, gpus=gpus, accelerator=accelerator))

        stopped = False
        for e in evs:
            if stopped:
                break
            if e.kind in ("requested", "started"):
                if phase is None:
                    phase, since = "cold_start", e.ts
            elif e.kind == "ready":
                if phase in (None, "cold_start"):
                    close(e.ts)
                    phase, since = "idle", e.ts
            elif e.kind == "serving":
                if phase == "idle":
                    close(e.ts)
                    phase, since = "active", e.ts
            elif e.kind == "idle":
                if phase == "active":
                    close(e.ts)
                    phase, since = "idle", e.ts
            elif e.kind == "stopped":
                close(e.ts)
                stopped = True
        if not stopped and evs:
            close(evs[-1].ts)  # died without a stop: bill to the last sign of life
    return intervals


def split_intervals(intervals: Iterable[Interval], prices: PriceTable) -> list[Interval]:
    """Cut at UTC midnights and price-version changes; stamp each piece with its price version."""
    pieces = []
    for iv in intervals:
        cuts = sorted(set(day_boundaries(iv.start, iv.end) + prices.boundaries(iv.start, iv.end)))
        edges = [iv.start, *cuts, iv.end]
        for a, b in zip(edges, edges[1:]):
            pieces.append(iv.model_copy(update={"start": a, "end": b,
                                                "price_version": prices.version_at(a).version}))
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


def bill(intervals: Iterable[Interval], prices: PriceTable, *, by_day: bool = False,
         min_increment_s: Decimal | None = None) -> list[BillLine]:
    """Per-second bill. A replica start shorter than the minimum increment is charged the minimum
    (the difference counts as idle time at the replica's first price)."""
    minimum = prices.min_increment_s if min_increment_s is None else min_increment_s
    pieces = split_intervals(intervals, prices)
    lines: dict[tuple[str, str, str | None], BillLine] = {}
    per_replica: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    first_piece: dict[tuple[str, str, str], Interval] = {}
    versions = {v.version: v for v in prices.versions}
    for piece in sorted(pieces, key=lambda p: p.start):
        day = dt.datetime.fromtimestamp(piece.start, dt.timezone.utc).date().isoformat() if by_day else None
        line = lines.setdefault((piece.app, piece.function, day), BillLine(app=piece.app, function=piece.function, day=day))
        gpu_s = to_decimal_seconds(piece.seconds) * Decimal(repr(piece.gpus))
        rate = prices.rate(versions[piece.price_version], piece.accelerator)
        line.gpu_seconds[piece.phase] += gpu_s
        line.cost_usd[piece.phase] += cost_usd(gpu_s, rate)
        key = (piece.app, piece.function, piece.replica)
        per_replica[key] += to_decimal_seconds(piece.seconds)
        first_piece.setdefault(key, piece)
    for key, seconds in per_replica.items():
        piece = first_piece[key]
        day = dt.datetime.fromtimestamp(piece.start, dt.timezone.utc).date().isoformat() if by_day else None
        line = lines[(piece.app, piece.function, day)]
        line.replica_starts += 1
        if seconds < minimum:
            extra = (minimum - seconds) * Decimal(repr(piece.gpus))
            line.gpu_seconds["idle"] += extra
            line.cost_usd["idle"] += cost_usd(extra, prices.rate(versions[piece.price_version], piece.accelerator))
    return sorted(lines.values(), key=lambda line: (line.app, line.function, line.day or ""))
