"""What was used and what it costs: the bill from the meter's ledger, and the comparison of the
serverless bill with dedicated GPUs and per-request prices."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import ray

from billing.cost import (
    DEFAULT_API_USD_PER_REQUEST,
    DEFAULT_DEDICATED_USD_PER_GPU_HOUR,
    CostComparison,
    PriceRange,
    compare_costs,
)
from billing.intervals import BillLine, Interval
from billing.node_bill import NodeBill
from raygpu.ops.contracts import Bill, BillLineOut, CallStage, CallStages
from raygpu.sdk.control import meter
from raygpu.sdk.errors import NotFoundError


def parse_time(text: str | None) -> float | None:
    """An ISO 8601 time (UTC unless it says otherwise) or a Unix timestamp; ValueError otherwise."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: use ISO 8601 (2026-11-27T10:00) or a Unix timestamp"
        ) from None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()


def _decimal_sum(values: list[str]) -> str:
    return str(sum((Decimal(v) for v in values), Decimal(0)))


def call_stages(call_id: str) -> CallStages:
    """The stages of one call (a function and each function it called, each run of each), from the
    meter's ledger; NotFoundError when nothing ran under that id (yet: replicas report each second)."""
    stages = [CallStage.model_validate(row) for row in ray.get(meter().call_stages.remote(call_id))]
    if not stages:
        raise NotFoundError(
            f"no call {call_id!r} is recorded: check the id (the gateway answers it in x-raygpu-call-id); "
            "a call that just ended is recorded within a few seconds"
        )
    return CallStages(call_id=call_id, stages=stages)


def node_bill(since: float | None = None, until: float | None = None) -> NodeBill:
    """GPU-seconds of GPU nodes alive next to those billed to functions, the gap split by cause."""
    return NodeBill.model_validate(ray.get(meter().node_bill.remote(since, until)))


def bill(app: str | None = None, since: float | None = None, until: float | None = None, by: str = "function") -> Bill:
    """GPU-seconds by phase and their cost per function (and per day with `by="day"`)."""
    raw = ray.get(meter().bill.remote(app, since, until, by == "day"))
    lines = [
        BillLineOut(
            app=r["app"],
            function=r["function"],
            day=r["day"],
            gpu_seconds=r["gpu_seconds"],
            cost_usd=r["cost_usd"],
            replica_starts=r["replica_starts"],
            total_gpu_seconds=_decimal_sum(list(r["gpu_seconds"].values())),
            total_cost_usd=_decimal_sum(list(r["cost_usd"].values())),
        )
        for r in raw
    ]
    return Bill(
        app=app,
        since=since,
        until=until,
        by=by,
        lines=lines,
        total_gpu_seconds=_decimal_sum([line.total_gpu_seconds for line in lines]),
        total_cost_usd=_decimal_sum([line.total_cost_usd for line in lines]),
    )


def cost(
    target: str | None = None,
    since: float | None = None,
    until: float | None = None,
    dedicated: str | None = None,
    per_request: str | None = None,
) -> CostComparison:
    """The recorded traffic of `target` (APP or APP/FUNCTION, None for all) priced as billed, on
    dedicated GPUs by the hour (`dedicated`: "LOW-HIGH" $/GPU-hour) and per request."""
    try:
        dedicated_range = PriceRange.parse(dedicated or DEFAULT_DEDICATED_USD_PER_GPU_HOUR)
        api_range = PriceRange.parse(per_request or DEFAULT_API_USD_PER_REQUEST)
    except ValueError as exc:
        raise ValueError(f"{exc} (give $ amounts as LOW-HIGH, e.g. --dedicated 2.00-8.00)") from None
    app, _, function = (target or "").partition("/")
    usage = ray.get(meter().usage.remote(app or None, function or None, since, until))
    if not usage["intervals"] and not usage["requests"]:
        period = " in that period" if since is not None or until is not None else ""
        raise NotFoundError(f"no recorded usage for {target or 'any app'}{period}; check the name with `raygpu ls`")
    return compare_costs(
        [Interval(**iv) for iv in usage["intervals"]],
        [BillLine(**line) for line in usage["bill"]],
        usage["requests"],
        dedicated_usd_per_gpu_hour=dedicated_range,
        api_usd_per_request=api_range,
        app=app or None,
        function=function or None,
        since=since,
        until=until,
    )
