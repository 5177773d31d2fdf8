"""The meter: a named, detached Ray actor that restarts on failure and writes the ledger.

Replicas send batches of lifecycle events and request records (`MeterClient`); ids make every
resend harmless. `bill` and `usage` answer the CLI from the same ledger.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import ray

from billing.intervals import bill, replica_intervals
from billing.ledger import Ledger
from billing.prices import load_price_table

METER_ACTOR_NAME = "raygpu-meter"


class Meter:
    def __init__(self, ledger_path: str, prices_path: str | None = None):
        self.ledger = Ledger(ledger_path)
        self.prices_path = prices_path

    async def ping(self) -> str:
        return str(self.ledger.path)

    async def record(self, batch: dict[str, list[dict[str, Any]]]) -> int:
        events, requests = self.ledger.apply(batch.get("events", []), batch.get("requests", []))
        return len(events) + len(requests)

    async def bill(self, app: str | None = None, since: float | None = None, until: float | None = None,
                   by_day: bool = False, min_increment_s: str | None = None) -> list[dict[str, Any]]:
        intervals = replica_intervals(self.ledger.events(app))
        if since is not None or until is not None:
            lo, hi = since if since is not None else float("-inf"), until if until is not None else float("inf")
            intervals = [iv.model_copy(update={"start": max(iv.start, lo), "end": min(iv.end, hi)})
                         for iv in intervals if iv.end > lo and iv.start < hi]
        prices = load_price_table(self.prices_path)
        minimum = Decimal(min_increment_s) if min_increment_s is not None else None
        lines = bill(intervals, prices, by_day=by_day, min_increment_s=minimum)
        return [line.model_dump(mode="json") for line in lines]

    async def intervals(self, app: str | None = None, function: str | None = None) -> list[dict[str, Any]]:
        return [iv.model_dump() for iv in replica_intervals(self.ledger.events(app, function))]

    async def request_counts(self, app: str | None = None) -> dict[str, dict[int, int]]:
        return self.ledger.request_counts(app)


def start_meter(ledger_path: str, prices_path: str | None = None) -> Any:
    handle = ray.remote(Meter).options(
        name=METER_ACTOR_NAME, namespace="raygpu", lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=1000,
        resources={"node:__internal_head__": 0.001},
    ).remote(ledger_path, prices_path)
    ray.get(handle.ping.remote())
    return handle
