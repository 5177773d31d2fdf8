"""What the recorded traffic would cost three ways: as billed (per-second serverless), on
dedicated GPUs rented by the hour for the peak replica count, and at per-request API prices.
No Ray: the meter supplies intervals, the bill and the request count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from billing.intervals import BillLine, Interval
from billing.prices import MICRO, to_decimal_seconds

DEFAULT_DEDICATED_USD_PER_GPU_HOUR = "2.00-8.00"
DEFAULT_API_USD_PER_REQUEST = "0.01-0.10"
RATIO = Decimal("0.0001")
OptionName = Literal["serverless", "dedicated", "per_request"]


class PriceRange(BaseModel):
    """A price known as a range (a market, not one vendor): low to high, in USD."""

    low: Decimal = Field(ge=0)
    high: Decimal = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "PriceRange":
        if self.low > self.high:
            raise ValueError(f"the low end {self.low} is above the high end {self.high}")
        return self

    @classmethod
    def parse(cls, text: str) -> "PriceRange":
        """'2.00-8.00' or a single price '3.50'."""
        low, sep, high = text.strip().partition("-")
        try:
            return cls(low=Decimal(low), high=Decimal(high if sep else low))
        except ArithmeticError:
            raise ValueError(f"cannot read {text!r} as a price or a LOW-HIGH range, e.g. 2.00-8.00") from None
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"price range {text!r}: {reason}") from None


class CostOption(BaseModel):
    option: OptionName
    low_usd: Decimal
    high_usd: Decimal
    basis: str

    @property
    def midpoint(self) -> Decimal:
        return (self.low_usd + self.high_usd) / 2


class CostComparison(BaseModel):
    """`raygpu cost --json`: the same traffic priced three ways (money as strings)."""

    app: str | None
    function: str | None
    period_start: float | None
    period_end: float | None
    period_s: Decimal
    requests: int
    peak_replicas: int
    peak_gpus: Decimal
    rented_gpu_hours: int
    active_gpu_seconds: Decimal
    billed_gpu_seconds: Decimal
    utilisation: Decimal | None = Field(description="active GPU-seconds / GPU-seconds of the dedicated rental")
    options: list[CostOption]
    cheapest: OptionName | None
    cheapest_at_any_price: bool = Field(description="the cheapest option's high end is below every other's low end")
    break_even_utilisation: PriceRange | None = Field(
        default=None,
        description="utilisation of the dedicated GPUs above which renting them beats the serverless bill "
        "(low: at the low dedicated price); above 1 means never",
    )
    serverless_usd_per_request: Decimal | None


def peak_concurrency(intervals: Iterable[Interval]) -> tuple[int, Decimal]:
    """Most replicas, and most GPUs, alive at the same time (a replica lives from its first to last interval)."""
    lifetimes: dict[tuple[str, str, str], list[float]] = {}
    gpus: dict[tuple[str, str, str], float] = {}
    for iv in intervals:
        key = (iv.app, iv.function, iv.replica)
        span = lifetimes.setdefault(key, [iv.start, iv.end])
        span[0], span[1] = min(span[0], iv.start), max(span[1], iv.end)
        gpus[key] = max(gpus.get(key, 0.0), iv.gpus)
    # ends sort before starts at the same instant: a replacement is not a second replica
    changes = sorted(
        [(s, 1, key) for key, (s, _) in lifetimes.items()] + [(e, -1, key) for key, (_, e) in lifetimes.items()],
        key=lambda c: (c[0], c[1]),
    )
    replicas, held, peak_replicas, peak_gpus = 0, Decimal(0), 0, Decimal(0)
    for _, step, key in changes:
        replicas += step
        held += step * Decimal(repr(gpus[key]))
        peak_replicas, peak_gpus = max(peak_replicas, replicas), max(peak_gpus, held)
    return peak_replicas, peak_gpus


def compare_costs(
    intervals: list[Interval],
    bill_lines: list[BillLine],
    requests: int,
    *,
    dedicated_usd_per_gpu_hour: PriceRange,
    api_usd_per_request: PriceRange,
    app: str | None = None,
    function: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> CostComparison:
    starts = [iv.start for iv in intervals]
    ends = [iv.end for iv in intervals]
    period_start = since if since is not None else (min(starts) if starts else None)
    period_end = until if until is not None else (max(ends) if ends else None)
    period_s = (
        to_decimal_seconds(period_end - period_start)
        if period_start is not None and period_end is not None
        else Decimal(0)
    )
    peak_replicas, peak_gpus = peak_concurrency(intervals)
    rented_gpus = math.ceil(peak_gpus)
    hours = math.ceil(period_s / 3600) if period_s > 0 else 0
    billed_usd = sum((line.total_cost_usd for line in bill_lines), Decimal(0))
    billed_gpu_s = sum((line.total_gpu_seconds for line in bill_lines), Decimal(0))
    active_gpu_s = sum((line.gpu_seconds["active"] for line in bill_lines), Decimal(0))

    def money(value: Decimal) -> Decimal:
        return value.quantize(MICRO, rounding=ROUND_HALF_UP)

    options = [
        CostOption(
            option="serverless",
            low_usd=billed_usd,
            high_usd=billed_usd,
            basis=f"{billed_gpu_s} GPU-s billed per second (cold start, active and idle)",
        ),
        CostOption(
            option="dedicated",
            low_usd=money(rented_gpus * hours * dedicated_usd_per_gpu_hour.low),
            high_usd=money(rented_gpus * hours * dedicated_usd_per_gpu_hour.high),
            basis=f"{rented_gpus} GPUs (the peak) rented for {hours} h at "
            f"${dedicated_usd_per_gpu_hour.low}-{dedicated_usd_per_gpu_hour.high}/GPU-h",
        ),
        CostOption(
            option="per_request",
            low_usd=money(requests * api_usd_per_request.low),
            high_usd=money(requests * api_usd_per_request.high),
            basis=f"{requests} requests at ${api_usd_per_request.low}-{api_usd_per_request.high} each",
        ),
    ]
    cheapest, certain = None, False
    if requests or billed_usd:
        best = min(options, key=lambda o: (o.midpoint, o.option != "serverless"))
        cheapest = best.option
        certain = all(best.high_usd <= other.low_usd for other in options if other is not best)
    capacity_gpu_s = Decimal(rented_gpus * hours * 3600)
    utilisation = (active_gpu_s / capacity_gpu_s).quantize(RATIO, rounding=ROUND_HALF_UP) if capacity_gpu_s else None
    break_even = None
    if billed_usd > 0 and active_gpu_s > 0:
        # Serverless cost grows with busy time; a rental costs the same at any utilisation. At the
        # measured ratio of billed to active time, the two are equal when utilisation U satisfies
        # U * capacity * rate / 3600 == bill * U / U_measured, i.e. U = active * rate / 3600 / bill.
        def at(rate: Decimal) -> Decimal:
            return (active_gpu_s * rate / 3600 / billed_usd).quantize(RATIO, rounding=ROUND_HALF_UP)

        break_even = PriceRange(low=at(dedicated_usd_per_gpu_hour.low), high=at(dedicated_usd_per_gpu_hour.high))
    return CostComparison(
        app=app,
        function=function,
        period_start=period_start,
        period_end=period_end,
        period_s=period_s,
        requests=requests,
        peak_replicas=peak_replicas,
        peak_gpus=peak_gpus,
        rented_gpu_hours=rented_gpus * hours,
        active_gpu_seconds=active_gpu_s,
        billed_gpu_seconds=billed_gpu_s,
        utilisation=utilisation,
        options=options,
        cheapest=cheapest,
        cheapest_at_any_price=certain,
        break_even_utilisation=break_even,
        serverless_usd_per_request=money(billed_usd / requests) if requests else None,
    )
