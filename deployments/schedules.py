"""Schedules of functions: when a `Cron` or `Period` is due, and which due time the scheduler runs.

Pure (no Ray): the decorators validate with it, the scheduler actor (deployments/calls/scheduler.py)
and `raygpu status` compute due times with it, the unit tests drive it with any clock. Cron
expressions are parsed by croniter; times are epoch seconds, wall clock.

Cron times are wall-clock times of the schedule's timezone: across a daylight-saving change a
local time that does not exist is skipped, and one that occurs twice runs once (at its first
occurrence). A Period's due times count from the moment its version went live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIN_PERIOD_S = 10.0
MAX_PERIOD_S = 366 * 24 * 3600.0
# A due time missed by a restart is still run when found at most this late (and within three
# quarters of the time to the following one); older ones are not run: no backfill after downtime.
MISFIRE_GRACE_S = 60.0
MISFIRE_GRACE_SHARE = 0.75
# Local times tried past ones that do not exist (a daylight-saving gap) before giving up.
_MAX_SKIPPED = 1000


class ScheduleError(ValueError):
    """A schedule that cannot run: the message names the problem."""


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown timezone {name!r}: use an IANA name such as 'UTC', 'Europe/Berlin' or 'America/New_York'"
        ) from None


def _exists(local: datetime, zone: ZoneInfo) -> float | None:
    """The epoch time of naive local wall time `local` in `zone` (its first occurrence when it occurs
    twice), or None when it does not exist (skipped by a daylight-saving change)."""
    aware = local.replace(tzinfo=zone, fold=0)
    back = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back != local:
        return None
    return aware.timestamp()


class CronSchedule(BaseModel):
    """`raygpu.Cron("0 3 * * *", timezone="Europe/Berlin")`: five cron fields (or @hourly, @daily,
    @weekly, @monthly, @yearly), in UTC unless `timezone` names another zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["cron"] = "cron"
    expression: str = Field(min_length=1, max_length=200)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)

    @field_validator("expression")
    @classmethod
    def _check_expression(cls, expression: str) -> str:
        expression = " ".join(expression.split())
        if not expression.startswith("@") and len(expression.split(" ")) != 5:
            raise ScheduleError(
                f"cron expression {expression!r} must have five fields (minute hour day-of-month month "
                "day-of-week), e.g. '0 3 * * *' for 03:00 every day"
            )
        if not croniter.is_valid(expression):
            raise ScheduleError(f"invalid cron expression {expression!r}: see `man 5 crontab` for the syntax")
        return expression

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, timezone: str) -> str:
        _zone(timezone)
        return timezone

    @model_validator(mode="after")
    def _check_occurs(self) -> "CronSchedule":
        try:
            self.next_after(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
        except ScheduleError:
            raise ScheduleError(f"cron expression {self.expression!r} never comes due") from None
        return self

    def _times(self, t: float, forward: bool) -> float:
        zone = _zone(self.timezone)
        local = datetime.fromtimestamp(t, zone).replace(tzinfo=None)
        try:
            # a wall time a second past (or before) `t`, so that `t`'s own minute is a candidate
            it = croniter(self.expression, local + timedelta(seconds=-1 if forward else 1))
            for _ in range(_MAX_SKIPPED):
                candidate = it.get_next(datetime) if forward else it.get_prev(datetime)
                at = _exists(candidate, zone)
                if at is not None and (at > t if forward else at <= t):
                    return at
        except (CroniterBadDateError, CroniterError, OverflowError, ValueError):
            pass
        raise ScheduleError(f"cron expression {self.expression!r} has no due time near {t:.0f}")

    def next_after(self, t: float) -> float:
        """The first due time strictly after `t`."""
        return self._times(t, forward=True)

    def latest_at_or_before(self, t: float) -> float:
        """The last due time at or before `t`."""
        return self._times(t, forward=False)

    def describe(self) -> str:
        return f"cron {self.expression!r}" + ("" if self.timezone == "UTC" else f" ({self.timezone})")


class PeriodSchedule(BaseModel):
    """`raygpu.Period(hours=1)`: every `seconds`, counted from the moment the version went live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["period"] = "period"
    seconds: float

    @field_validator("seconds")
    @classmethod
    def _check_seconds(cls, seconds: float) -> float:
        if not math.isfinite(seconds) or seconds < MIN_PERIOD_S:
            raise ScheduleError(f"a Period must be at least {MIN_PERIOD_S:g} seconds, not {seconds:g}")
        if seconds > MAX_PERIOD_S:
            raise ScheduleError("a Period must be at most 366 days; use raygpu.Cron for yearly runs")
        return float(seconds)

    def describe(self) -> str:
        seconds = self.seconds
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
            if seconds >= size and seconds % size == 0:
                return f"every {seconds / size:g} {unit}"
        return f"every {seconds:g} s"


Schedule = Annotated[CronSchedule | PeriodSchedule, Field(discriminator="kind")]


def period(days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0) -> PeriodSchedule:
    """A PeriodSchedule from its parts (each a non-negative number)."""
    parts = {"days": days, "hours": hours, "minutes": minutes, "seconds": seconds}
    for name, value in parts.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
            raise ScheduleError(f"Period({name}=...) takes a non-negative number, not {value!r}")
    return PeriodSchedule(seconds=days * 86400 + hours * 3600 + minutes * 60 + seconds)


def next_due_after(schedule: CronSchedule | PeriodSchedule, t: float, live_at: float) -> float:
    """The first due time strictly after `t` (and after `live_at`, when the version went live)."""
    t = max(t, live_at)
    if isinstance(schedule, PeriodSchedule):
        k = math.floor((t - live_at) / schedule.seconds) + 1
        return live_at + k * schedule.seconds
    return schedule.next_after(t)


def latest_due(schedule: CronSchedule | PeriodSchedule, now: float, live_at: float) -> float | None:
    """The last due time in (live_at, now], None when none came due since the version went live."""
    if now <= live_at:
        return None
    if isinstance(schedule, PeriodSchedule):
        k = math.floor((now - live_at) / schedule.seconds)
        return live_at + k * schedule.seconds if k >= 1 else None
    latest = schedule.latest_at_or_before(now)
    return latest if latest > live_at else None


@dataclass(frozen=True)
class DuePlan:
    """What the scheduler does for one function now: run `run_due` (None: nothing is due), and look
    again at `next_due`."""

    run_due: float | None
    next_due: float


def plan_due(schedule: CronSchedule | PeriodSchedule, live_at: float, last_due: float | None, now: float) -> DuePlan:
    """The due time to run now, if any, and the next one. Each due time runs at most once (those at or
    before `last_due`, the last one recorded, never again); a due time found late (a restarted head)
    still runs within its grace; earlier ones are not run (no backfill)."""
    floor = max(live_at, last_due if last_due is not None else -math.inf)
    latest = latest_due(schedule, now, live_at)
    if latest is not None and latest > floor:
        following = next_due_after(schedule, latest, live_at)
        if now - latest <= min(MISFIRE_GRACE_S, MISFIRE_GRACE_SHARE * (following - latest)):
            return DuePlan(latest, following)
    return DuePlan(None, next_due_after(schedule, max(now, floor), live_at))
