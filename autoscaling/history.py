"""What raygpu learns from one function's arrivals: an idle-time histogram, a period detector over
session starts and an arrival-rate EWMA. Plain data (no Ray), serialisable, updated online one
arrival at a time.

A session is a run of calls with no gap of `session_gap_s` or more inside it (gaps shorter than a
replica start are never worth stopping for). The period detector compares the intervals between
session starts, so a cron job that fans out into a burst of calls is as periodic as a plain timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Log-spaced gap bins: 1 s .. 4 h, 24 per decade (10% wide; ATC'20 uses 1-minute bins up to 4 h,
# too coarse at the seconds-scale gaps of GPU functions and too fine for a pre-warm window at hours).
BIN_MIN_S = 1.0
BIN_MAX_S = 4 * 3600.0
BINS_PER_DECADE = 24
N_BINS = int(math.ceil(math.log10(BIN_MAX_S / BIN_MIN_S) * BINS_PER_DECADE)) + 1
PERIOD_WINDOW = 4  # session-start intervals compared by the period detector
PERIOD_TOLERANCE = 0.1  # intervals within ±10% of their median count as periodic
HISTOGRAM_DECAY = 0.995  # per observed gap: old behaviour fades over ~200 gaps


def gap_bin(gap_s: float) -> int:
    if gap_s <= BIN_MIN_S:
        return 0
    return min(N_BINS - 1, int(math.log10(gap_s / BIN_MIN_S) * BINS_PER_DECADE) + 1)


def bin_upper_s(index: int) -> float:
    return BIN_MIN_S * 10 ** (index / BINS_PER_DECADE)


def bin_edges() -> list[float]:
    """Lower edge of every bin, then the upper edge of the last."""
    return [0.0] + [bin_upper_s(i) for i in range(N_BINS)]


@dataclass
class ArrivalHistory:
    """Online statistics of the gaps between arrivals (gaps under `burst_gap_s` are bursts, not idle)."""

    burst_gap_s: float = 1.0
    session_gap_s: float = 30.0
    last_arrival: float | None = None
    counts: list[float] = field(default_factory=lambda: [0.0] * N_BINS)
    sums: list[float] = field(default_factory=lambda: [0.0] * N_BINS)  # weighted seconds per bin
    total: float = 0.0
    out_of_bounds: float = 0.0
    session_start: float | None = None
    recent_intervals: list[float] = field(default_factory=list)  # between session starts
    rate_ewma: float = 0.0  # arrivals per second
    weight: float = 1.0  # weight of the next gap: decay applied lazily, old gaps keep smaller weights
    gaps_seen: int = 0

    def observe(self, t: float) -> None:
        if self.last_arrival is not None and t < self.last_arrival:
            return  # out of order: already covered by a later arrival
        if self.last_arrival is not None:
            gap = t - self.last_arrival
            alpha = 1 - math.exp(-max(gap, 1e-3) / 60.0)
            self.rate_ewma = (1 - alpha) * self.rate_ewma + alpha / max(gap, 1e-3)
            if gap >= self.burst_gap_s:
                self.observe_gap(gap)
            if gap >= self.session_gap_s:
                self._observe_session_start(t)
        else:
            self.session_start = t
        self.last_arrival = t

    def _observe_session_start(self, t: float) -> None:
        if self.session_start is not None:
            self.recent_intervals.append(t - self.session_start)
            if len(self.recent_intervals) > PERIOD_WINDOW:
                del self.recent_intervals[0]
        self.session_start = t

    def observe_gap(self, gap: float) -> None:
        """Add one idle gap to the histogram (the newest weighs most)."""
        self.weight /= HISTOGRAM_DECAY
        if self.weight > 1e200:  # renormalise before floats overflow
            self.counts = [c / self.weight for c in self.counts]
            self.sums = [m / self.weight for m in self.sums]
            self.total /= self.weight
            self.out_of_bounds /= self.weight
            self.weight = 1.0
        if gap > BIN_MAX_S:
            self.out_of_bounds += self.weight
        else:
            index = gap_bin(gap)
            self.counts[index] += self.weight
            self.sums[index] += self.weight * gap
        self.total += self.weight
        self.gaps_seen += 1

    # --- what the policy asks -----------------------------------------------------------------
    def period(self) -> float | None:
        """The period of a timer or cron-like function: the last intervals between session starts
        agree within the tolerance."""
        if len(self.recent_intervals) < PERIOD_WINDOW:
            return None
        ordered = sorted(self.recent_intervals)
        median = ordered[len(ordered) // 2]
        if all(abs(g - median) <= PERIOD_TOLERANCE * median for g in self.recent_intervals):
            return median
        return None

    def period_spread(self) -> float:
        """How far the recent session-start intervals stray from their median, in seconds."""
        if not self.recent_intervals:
            return 0.0
        ordered = sorted(self.recent_intervals)
        median = ordered[len(ordered) // 2]
        return max(abs(g - median) for g in self.recent_intervals)

    def decayed(self) -> tuple[list[float], list[float], float]:
        """Bin weights, bin seconds and the weight past the last bin, in the units of the latest gap."""
        return self.counts, self.sums, self.out_of_bounds

    def to_dict(self) -> dict[str, Any]:
        return {
            "burst_gap_s": self.burst_gap_s,
            "last_arrival": self.last_arrival,
            "session_gap_s": self.session_gap_s,
            "counts": self.counts,
            "sums": self.sums,
            "total": self.total,
            "out_of_bounds": self.out_of_bounds,
            "session_start": self.session_start,
            "recent_intervals": self.recent_intervals,
            "rate_ewma": self.rate_ewma,
            "weight": self.weight,
            "gaps_seen": self.gaps_seen,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ArrivalHistory":
        if not data or len(data.get("counts", [])) != N_BINS or len(data.get("sums", [])) != N_BINS:
            return cls()  # saved by an older layout: learn afresh
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
