"""What replicas send the meter, validated before anything is written: lifecycle events, request
records and start phases. A record that fails is rejected with the reason; the rest of its batch
is kept. No Ray."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from billing.intervals import LifecycleEvent

# Timestamps outside this window are refused: before 2020 or past 2200 is a broken clock or a forgery.
MIN_TS, MAX_TS = 1_577_836_800.0, 7_258_118_400.0


def _finite_ts(value: float) -> float:
    if not math.isfinite(value) or not MIN_TS <= value <= MAX_TS:
        raise ValueError("a timestamp must be a finite Unix time between 2020 and 2200")
    return value


class CheckedEvent(LifecycleEvent):
    """A lifecycle event as the meter accepts it."""

    id: str = Field(min_length=1, max_length=200)
    app: str = Field(min_length=1, max_length=200)
    function: str = Field(min_length=1, max_length=200)
    replica: str = Field(min_length=1, max_length=200)
    gpus: float = Field(default=0.0, ge=0, le=1024)

    _ts = field_validator("ts")(_finite_ts)


class RequestRecord(BaseModel):
    """One call as a replica reports it."""

    id: str = Field(min_length=1, max_length=200)
    app: str = Field(min_length=1, max_length=200)
    function: str = Field(min_length=1, max_length=200)
    replica: str = Field(min_length=1, max_length=200)
    status: int = Field(ge=100, le=599)
    latency_s: float = Field(ge=0, le=366 * 86400)
    bytes_in: int = Field(ge=0)
    bytes_out: int = Field(ge=0)
    ts: float
    call_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    attempt: int | None = Field(default=None, ge=1, le=1000)

    _ts = field_validator("ts")(_finite_ts)


class StartPhasesRecord(BaseModel):
    """A replica's start, by phase (seconds each)."""

    app: str = Field(min_length=1, max_length=200)
    function: str = Field(min_length=1, max_length=200)
    replica: str = Field(min_length=1, max_length=200)
    phases: dict[str, float]
    ts: float

    _ts = field_validator("ts")(_finite_ts)

    @field_validator("phases")
    @classmethod
    def _finite_phases(cls, value: dict[str, float]) -> dict[str, float]:
        for name, seconds in value.items():
            if not name or len(name) > 64 or not math.isfinite(seconds) or not 0 <= seconds <= 86400:
                raise ValueError(f"phase {name!r}: seconds must be finite, between 0 and 86400")
        return value


def checked(rows: Any, model: type[BaseModel]) -> tuple[list[dict[str, Any]], list[str]]:
    """(the rows `model` accepts, as plain dicts; why each other row was refused)."""
    if not isinstance(rows, list):
        return [], [f"expected a list of records, got {type(rows).__name__}"]
    accepted: list[dict[str, Any]] = []
    refused: list[str] = []
    for row in rows:
        try:
            accepted.append(model.model_validate(row).model_dump())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            refused.append(f"{where}: {first['msg']}")
    return accepted, refused


class PlacementRecord(BaseModel):
    """The node a replica runs on, as the replica reports it once."""

    replica: str = Field(min_length=1, max_length=200)
    node_id: str = Field(min_length=1, max_length=200, pattern=r"^[0-9a-f]+$")
