"""`raygpu.Cron` and `raygpu.Period`: when the cluster runs a function on its own
(`@app.function(schedule=raygpu.Cron("0 3 * * *", timezone="Europe/Berlin"))`). Checked where they
are written: an invalid expression, an unknown timezone or a period under 10 s raise InvalidSpecError."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from deployments.schedules import CronSchedule, PeriodSchedule, ScheduleError, period
from raygpu.sdk.errors import InvalidSpecError


def _reason(exc: ValidationError) -> str:
    return "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors(include_url=False))


class Cron(CronSchedule):
    """Runs at the times a five-field cron expression names (`"0 3 * * *"`: 03:00 every day), in UTC
    unless `timezone` names an IANA zone. Across a daylight-saving change a local time that does not
    exist is skipped and one that occurs twice runs once."""

    def __init__(self, expression: str, timezone: str = "UTC", **data: Any):
        try:
            super().__init__(expression=expression, timezone=timezone, **data)
        except ValidationError as exc:
            raise InvalidSpecError(f"Cron({expression!r}, timezone={timezone!r}): {_reason(exc)}") from None


class Period(PeriodSchedule):
    """Runs every `days`/`hours`/`minutes`/`seconds` (together at least 10 s), counted from the moment
    the deployed version went live (a new version starts a new count)."""

    def __init__(self, *, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0, **data: Any):
        if data:
            # pydantic's own copies pass the stored fields back in
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise InvalidSpecError(f"Period: {_reason(exc)}") from None
            return
        try:
            total = period(days, hours, minutes, seconds).seconds
            super().__init__(seconds=total)
        except (ValidationError, ScheduleError) as exc:
            reason = _reason(exc) if isinstance(exc, ValidationError) else str(exc)
            raise InvalidSpecError(f"Period: {reason}") from None


__all__ = ["Cron", "Period"]
