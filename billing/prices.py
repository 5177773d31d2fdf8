"""The versioned GPU price table (YAML, validated by pydantic) and Decimal money math. No Ray."""

from __future__ import annotations

import datetime as dt
import os
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_PRICES_PATH = Path(__file__).with_name("prices.yaml")
PRICES_ENV = "RAYGPU_PRICES"
CENT = Decimal("0.01")
MICRO = Decimal("0.000001")


class PriceVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    effective_from: dt.datetime
    usd_per_gpu_hour: dict[str, Decimal]

    @field_validator("effective_from")
    @classmethod
    def _utc(cls, value: dt.datetime) -> dt.datetime:
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)

    @field_validator("usd_per_gpu_hour")
    @classmethod
    def _positive(cls, prices: dict[str, Decimal]) -> dict[str, Decimal]:
        for name, price in prices.items():
            if price < 0:
                raise ValueError(f"price of {name} must not be negative")
        if not prices:
            raise ValueError("a version needs at least one accelerator price")
        return prices

    @property
    def starts_at(self) -> float:
        return self.effective_from.timestamp()


class PriceTable(BaseModel):
    """All price versions; `price_at` answers which version and rate applied at a time."""

    model_config = ConfigDict(extra="forbid")

    default_type: str
    min_increment_s: Decimal = Field(default=Decimal("1"), ge=0)
    versions: list[PriceVersion]

    @model_validator(mode="after")
    def _consistent(self) -> "PriceTable":
        if not self.versions:
            raise ValueError("the price table needs at least one version")
        self.versions.sort(key=lambda v: v.effective_from)
        numbers = [v.version for v in self.versions]
        if numbers != sorted(set(numbers)):
            raise ValueError("version numbers must be unique and grow with effective_from")
        for v in self.versions:
            if self.default_type not in v.usd_per_gpu_hour:
                raise ValueError(f"version {v.version} has no price for default_type {self.default_type!r}")
        return self

    def version_at(self, t: float) -> PriceVersion:
        current = self.versions[0]
        for v in self.versions:
            if v.starts_at <= t:
                current = v
        return current

    def boundaries(self, start: float, end: float) -> list[float]:
        """Times inside (start, end) where a new price version takes effect."""
        return [v.starts_at for v in self.versions if start < v.starts_at < end]

    def rate(self, version: PriceVersion, accelerator: str | None) -> Decimal:
        kind = accelerator or self.default_type
        if kind not in version.usd_per_gpu_hour:
            raise KeyError(f"price version {version.version} has no price for {kind!r}; add it to the price table")
        return version.usd_per_gpu_hour[kind]


def load_price_table(path: str | Path | None = None) -> PriceTable:
    path = Path(path or os.environ.get(PRICES_ENV) or DEFAULT_PRICES_PATH)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"price table {path} not found; set {PRICES_ENV} to a valid file") from None
    return PriceTable.model_validate(data)


def exact_cost_usd(gpu_seconds: Decimal, usd_per_gpu_hour: Decimal) -> Decimal:
    """Unrounded cost: a bill sums these and rounds each phase once, so pieces add no rounding error."""
    return gpu_seconds * usd_per_gpu_hour / Decimal(3600)


def round_usd(amount: Decimal) -> Decimal:
    return amount.quantize(MICRO, rounding=ROUND_HALF_UP)


def to_decimal_seconds(seconds: float) -> Decimal:
    return Decimal(repr(seconds)).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP)
