"""What a cancelled call to a sync function costs. Python cannot stop a worker thread, so the only
way to free its slot at once is to replace the replica: a cold start. A caller must not be able to
buy cold starts with cancels (a DELETE of a spawned call, a client that hangs up), so a cancelled
sync call's replica finishes the call and its result is discarded, unless the call has run past
the grace; then its replica is replaced, at most `per_hour` times per function per hour. An async
function's call is really cancelled and costs nothing. Pure: no Ray."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Literal

# `raygpu up --cancel-grace`, `--cancel-replacements-per-hour`.
DEFAULT_CANCEL_GRACE_S = 30.0
DEFAULT_CANCEL_REPLACEMENTS_PER_HOUR = 4
HOUR_S = 3600.0

CancelOutcome = Literal["finish", "replace"]


@dataclass
class FunctionCancels:
    """One function's cancelled sync calls: replacements in the last hour, calls let finish."""

    replaced_at: collections.deque[float] = field(default_factory=collections.deque)
    replaced: int = 0
    finished: int = 0
    refused_by_limit: int = 0


class CancelReplacements:
    """Decides, per function, whether a cancelled sync call's replica is replaced."""

    def __init__(self, grace_s: float = DEFAULT_CANCEL_GRACE_S, per_hour: int = DEFAULT_CANCEL_REPLACEMENTS_PER_HOUR):
        self.grace_s = grace_s
        self.per_hour = per_hour
        self.functions: dict[str, FunctionCancels] = {}

    def decide(self, key: str, ran_s: float, now: float) -> CancelOutcome:
        """ "replace" when the call ran past the grace and the function has replacements left this
        hour; else "finish" (the call runs to its end, its result discarded)."""
        state = self.functions.setdefault(key, FunctionCancels())
        while state.replaced_at and state.replaced_at[0] <= now - HOUR_S:
            state.replaced_at.popleft()
        if not ran_s >= self.grace_s:
            state.finished += 1
            return "finish"
        if len(state.replaced_at) >= self.per_hour:
            state.finished += 1
            state.refused_by_limit += 1
            return "finish"
        state.replaced_at.append(now)
        state.replaced += 1
        return "replace"

    def summary(self, key: str, now: float) -> dict[str, float | int]:
        """What `raygpu status` shows of a function's cancelled sync calls."""
        state = self.functions.get(key, FunctionCancels())
        return {
            "replaced_last_hour": sum(1 for t in state.replaced_at if t > now - HOUR_S),
            "replaced": state.replaced,
            "finished_after_cancel": state.finished,
            "refused_by_limit": state.refused_by_limit,
            "limit_per_hour": self.per_hour,
            "grace_s": self.grace_s,
        }
