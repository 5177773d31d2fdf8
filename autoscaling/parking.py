"""Which functions at zero leave Serve until they are wanted again ("parked"): a deployment costs
Serve's controller work on every tick even at zero replicas, so a head holding many idle functions
keeps only those it may need soon. Pure: the parker applies it, the unit tests drive it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class QuietReport:
    """A function's policy at zero with nothing in flight since `since` (wall clock), wanting its
    next replica at `wake_at` (its pre-warm; None when it plans none)."""

    since: float
    wake_at: float | None = None

    @classmethod
    def from_wire(cls, raw: object) -> "QuietReport | None":
        """A report as the store keeps it ([since, wake_at]); None for anything else."""
        if not isinstance(raw, (list, tuple)) or len(raw) != 2:
            return None
        since, wake_at = raw
        if not _finite(since) or not (wake_at is None or _finite(wake_at)):
            return None
        return cls(float(since), None if wake_at is None else float(wake_at))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parks(now: float, report: QuietReport | None, park_after_s: float, min_containers: int) -> bool:
    """Park a function quiet for `park_after_s` whose plan wants no replica within as long again."""
    if park_after_s <= 0 or min_containers > 0 or report is None:
        return False
    if now - report.since < park_after_s:
        return False
    return report.wake_at is None or report.wake_at - now > park_after_s


def wakes(now: float, report: QuietReport | None, lead_s: float) -> bool:
    """Bring a parked function back `lead_s` ahead of the replica its plan pre-warms."""
    return report is not None and report.wake_at is not None and report.wake_at - now <= lead_s


def parked_after(
    now: float,
    min_containers: dict[str, int],
    parked: set[str],
    reports: dict[str, QuietReport],
    park_after_s: float,
    lead_s: float,
) -> set[str]:
    """The functions of one app parked after this pass: parked ones stay parked until their
    pre-warm comes near; others park once quiet long enough. Parking off (`park_after_s` <= 0)
    brings every function back."""
    if park_after_s <= 0:
        return set()
    result = set()
    for name, minimum in min_containers.items():
        report = reports.get(name)
        if name in parked:
            if minimum == 0 and not wakes(now, report, lead_s):
                result.add(name)
        elif parks(now, report, park_after_s, minimum):
            result.add(name)
    return result
