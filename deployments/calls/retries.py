"""Retry policies: how often, and after what pause, a call whose user code raised runs again
(Modal's `Retries`). Pure: no Ray."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments import constants
from deployments.errors import InvalidSpecError


class Retries(BaseModel):
    """Run a call again when the function's code raised: up to `max_retries` more times, the n-th
    retry after `initial_delay * backoff_coefficient ** (n - 1)` seconds, at most `max_delay`.
    Invalid arguments, a full queue, a timeout and raygpu's own call errors are not retried."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(ge=0, le=constants.MAX_RETRIES)
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=10.0)
    initial_delay: float = Field(default=1.0, ge=0.0, le=60.0)
    max_delay: float = Field(default=60.0, ge=0.0, le=60.0)

    def __init__(self, **fields: Any):
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'Retries'}: {error['msg']} (got {error.get('input')!r})"
                for error in exc.errors()
            )
            raise InvalidSpecError(f"raygpu.Retries: {problems}") from None

    def delay(self, retry: int) -> float:
        """The pause before retry number `retry` (1 for the first)."""
        return min(self.initial_delay * self.backoff_coefficient ** max(retry - 1, 0), self.max_delay)

    def total_delay(self) -> float:
        """The pauses of every retry together: what a caller's budget adds for them."""
        return sum(self.delay(n) for n in range(1, self.max_retries + 1))


NO_RETRIES = Retries(max_retries=0)


def as_retries(value: Any) -> Any:
    """`retries=` as a policy: an int n is `Retries(max_retries=n, backoff_coefficient=1.0,
    initial_delay=1.0)` (a fixed 1 s pause, Modal's meaning); anything else is validated as a policy."""
    if isinstance(value, bool):
        raise ValueError("retries must be an int or raygpu.Retries(...), not a bool")
    if isinstance(value, int):
        if value < 0 or value > constants.MAX_RETRIES:
            raise ValueError(f"retries must be between 0 and {constants.MAX_RETRIES}, not {value}")
        return Retries(max_retries=value, backoff_coefficient=1.0, initial_delay=1.0)
    return value
