"""The autoscaler's clock: wall-clock time that never steps back. No Ray.

The policy reasons in wall-clock seconds (arrival timestamps come from the gateways), but its
delays must not freeze when the system clock is stepped back, nor jump when it leaps ahead. This
clock advances with `time.monotonic()` from a wall-clock anchor; arrival timestamps are shifted
by the same correction and clamped so they never go back or past the present."""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyClock:
    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic):
        self._wall, self._monotonic = wall, monotonic
        self._wall_anchor, self._mono_anchor = wall(), monotonic()
        self._last_arrival = float("-inf")

    def now(self) -> float:
        return self._wall_anchor + (self._monotonic() - self._mono_anchor)

    def arrival(self, stamped: float) -> float:
        """An arrival's wall-clock stamp on this clock: corrected for any step of the system clock
        since the anchor, never before the previous arrival, never in the future."""
        now = self.now()
        corrected = stamped + (now - self._wall())
        corrected = min(max(corrected, self._last_arrival), now)
        self._last_arrival = corrected
        return corrected
