"""What raygpu learns from one function's arrivals: an idle-time histogram, a period detector and
an arrival-rate EWMA. Plain data (no Ray), serialisable, updated online one arrival at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Log-spaced gap bins: 1 s .. 4 h, 12 bins per decade (ATC'20 uses 1-minute bins up to 4 h; GPU
# functions at seconds-scale gaps need finer bins at the low end).
BIN_MIN_S = 1.0
BIN_MAX_S = 4 * 3600.0
BINS_PER_DECADE = 12
N_BINS = int(math.ceil(math.log10(BIN_MAX_S / BIN_MIN_S) * BINS_PER_DECADE)) + 1
PERIOD_WINDOW = 4  # gaps compared by the period detector
PERIOD_TOLERANCE = 0.1  # gaps within ±10% of their median count as periodic
HISTOGRAM_DECAY = 0.995  # per observed gap: old behaviour fades over ~200 gaps


def gap_bin(gap_s: float) -> int:
    if gap_s <= BIN_MIN_S:
        return 0
    return min(N_BINS - 1, int(math.log10(gap_s / BIN_MIN_S) * BINS_PER_DECADE) + 1)


def bin_upper_s(index: int) -> float:
    return BIN_MIN_S * 10 ** (index / BINS_PER_DECADE)


@dataclass
class ArrivalHistory:
    """Online statistics of the gaps between arrivals (gaps under `burst_gap_s` are bursts, not idle)."""

    burst_gap_s: float = 1.0
    last_arrival: float | None = None
    counts: list[float] = field(default_factory=lambda: [0.0] * N_BINS)
    total: float = 0.0
    out_of_bounds: float = 0.0
    recent_gaps: list[float] = field(default_factory=list)
    rate_ewma: float = 0.0  # arrivals per second
    weight: float = 1.0  # weight of the next gap: decay applied lazily, old gaps keep smaller weights

    def observe(self, t: float) -> None:
        if self.last_arrival is not None and t < self.last_arrival:
            return  # out of order: already covered by a later arrival
        if self.last_arrival is not None:
            gap = t - self.last_arrival
            alpha = 1 - math.exp(-max(gap, 1e-3) / 60.0)
            self.rate_ewma = (1 - alpha) * self.rate_ewma + alpha / max(gap, 1e-3)
            if gap >= self.burst_gap_s:
                self._observe_gap(gap)
        self.last_arrival = t

    def _observe_gap(self, gap: float) -> None:
        self.weight /= HISTOGRAM_DECAY
        if self.weight > 1e200:  # renormalise before floats overflow
            self.counts = [c / self.weight for c in self.counts]
            self.total /= self.weight
            self.out_of_bounds /= self.weight
            self.weight = 1.0
        if gap > BIN_MAX_S:
            self.out_of_bounds += self.weight
        else:
            self.counts[gap_bin(gap)] += self.weight
        self.total += self.weight
        self.recent_gaps.append(gap)
        if len(self.recent_gaps) > PERIOD_WINDOW:
            del self.recent_gaps[0]

    # --- what the policy asks -----------------------------------------------------------------
    def period(self) -> float | None:
        """The period of a timer-like function: the last gaps agree within the tolerance."""
        if len(self.recent_gaps) < PERIOD_WINDOW:
            return None
        ordered = sorted(self.recent_gaps)
        median = ordered[len(ordered) // 2]
        if all(abs(g - median) <= PERIOD_TOLERANCE * median for g in self.recent_gaps):
            return median
        return None

    def representative(self, min_samples: float = 10.0, max_oob_fraction: float = 0.1) -> bool:
        """Enough gaps, few beyond the histogram's range (ATC'20's fallback condition)."""
        seen = self.total / self.weight  # decayed number of gaps
        return seen >= min_samples and self.out_of_bounds <= max_oob_fraction * self.total

    def percentile(self, q: float, lower_edge: bool = False) -> float:
        """Gap percentile, q in [0, 100]: the upper edge of its bin, or the lower edge (the
        conservative side for a pre-warm)."""
        inside = self.total - self.out_of_bounds
        if inside <= 0:
            return BIN_MAX_S
        target = q / 100.0 * inside
        running = 0.0
        for index, count in enumerate(self.counts):
            running += count
            if running >= target and count > 0:
                if lower_edge:
                    return 0.0 if index == 0 else bin_upper_s(index - 1)
                return bin_upper_s(index)
        return BIN_MAX_S

    def to_dict(self) -> dict[str, Any]:
        return {
            "burst_gap_s": self.burst_gap_s,
            "last_arrival": self.last_arrival,
            "counts": self.counts,
            "total": self.total,
            "out_of_bounds": self.out_of_bounds,
            "recent_gaps": self.recent_gaps,
            "rate_ewma": self.rate_ewma,
            "weight": self.weight,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ArrivalHistory":
        if not data or len(data.get("counts", [])) != N_BINS:
            return cls()
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
