"""The meter: a named, detached Ray actor that restarts on failure, writes the ledger and
exports the Prometheus metrics.

Replicas send batches of lifecycle events and request records (`MeterClient`); ids make every
resend harmless. `bill`, `usage` and the exporter answer from the same ledger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

import ray

from billing.constants import METER_ACTOR_NAME, METER_NAMESPACE
from billing.intervals import Interval, LifecycleEvent, bill
from billing.ledger import Ledger
from billing.metrics import UsageMetrics
from billing.node_bill import NodeLifetime, node_bill
from billing.node_inventory import list_nodes
from billing.prices import load_price_table
from billing.records import CheckedEvent, PlacementRecord, RequestRecord, StartPhasesRecord, checked

logger = logging.getLogger(f"ray.serve.{__name__}")


# How often, at most, the meter asks the store for its units when a batch names one it does not know.
KNOWN_UNITS_REFRESH_S = 1.0
ROLLUP_INTERVAL_S = 60.0  # how often finished replicas are rolled up
NODE_POLL_S = 5.0  # how often node lifetimes are recorded
ROLLUP_BATCH_REPLICAS = 20  # replicas rolled up between two yields of the actor's loop


class Meter:
    """Writes what replicas report to the ledger. It accepts records only for units the control-plane
    store knows (a function of a recorded version): a batch naming any other is dropped and logged,
    and when the store cannot be asked, the batch is refused so the replica keeps it and resends."""

    def __init__(
        self,
        ledger_path: str,
        prices_path: str | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
        store_actor: str = "",
        store_namespace: str = "",
    ):
        self.store_actor, self.store_namespace = store_actor, store_namespace
        self._known_units: set[str] = set()
        self._known_at = float("-inf")
        self.rejected = 0
        self._rollup: asyncio.Task | None = None
        self._rolled_at = float("-inf")
        self.ledger = Ledger(ledger_path)
        self.prices_path = prices_path
        load_price_table(prices_path)  # a broken price table fails here, at `raygpu up`, not at billing time
        self.metrics = UsageMetrics()
        # A restarted meter exports the totals of the whole ledger again, not only what came after:
        # the ledger's kept totals, plus a replay of the replicas not rolled up yet.
        self.metrics.restore(self.ledger.totals())
        self.metrics.resume(self.ledger.checkpoints())
        self.metrics.observe_events(self.ledger.unrolled_events())
        self.metrics_port = metrics_port
        self._server = self.metrics.serve(metrics_port, metrics_host) if metrics_port else None
        self._nodes_task = asyncio.get_event_loop().create_task(self.watch_nodes()) if ray.is_initialized() else None

    async def ping(self) -> dict[str, Any]:
        return {"ledger": str(self.ledger.path), "metrics_port": self.metrics_port, "rejected": self.rejected}

    async def _refresh_known_units(self) -> None:
        store = ray.get_actor(self.store_actor, namespace=self.store_namespace)
        self._known_units = set(await store.known_units.remote())
        self._known_at = time.monotonic()

    async def _accepted(self, rows: list[Any]) -> list[dict[str, Any]]:
        """The rows that name a known unit; the rest are counted and logged."""
        valid = [r for r in rows if isinstance(r, dict) and isinstance(r.get("app"), str)]
        unknown = {f"{r['app']}/{r.get('function')}" for r in valid} - self._known_units
        if unknown and time.monotonic() - self._known_at >= KNOWN_UNITS_REFRESH_S:
            await self._refresh_known_units()  # raises while the store is away: the sender resends
            unknown -= self._known_units
        accepted = [r for r in valid if f"{r['app']}/{r.get('function')}" not in unknown]
        dropped = len(rows) - len(accepted)
        if dropped:
            self.rejected += dropped
            logger.warning(
                "raygpu meter: dropped %d record(s) for units the store does not know: %s",
                dropped,
                ", ".join(sorted(unknown)) or "(malformed)",
            )
        return accepted

    def _validated(self, rows: Any, model: type) -> list[dict[str, Any]]:
        """The rows that are valid records; the others are counted and logged, never written."""
        accepted, refused = checked(rows, model)
        if refused:
            self.rejected += len(refused)
            logger.warning(
                "raygpu meter: refused %d invalid %s record(s), e.g. %s", len(refused), model.__name__, refused[0]
            )
        return accepted

    async def record(self, batch: dict[str, list[dict[str, Any]]]) -> int:
        if not isinstance(batch, dict):
            self.rejected += 1
            logger.warning("raygpu meter: refused a batch that is a %s, not a dict", type(batch).__name__)
            return 0
        events = await self._accepted(self._validated(batch.get("events", []), CheckedEvent))
        requests = await self._accepted(self._validated(batch.get("requests", []), RequestRecord))
        phase_records = await self._accepted(self._validated(batch.get("start_phases", []), StartPhasesRecord))
        events, requests = self.ledger.apply(events, requests)
        self.metrics.observe_events(LifecycleEvent(**e) for e in events)
        self._maybe_roll_up()
        self.metrics.observe_requests(requests)
        phases = self.ledger.apply_start_phases(phase_records)
        self.metrics.observe_start_phases(phases)
        placements = self._validated(batch.get("placements", []), PlacementRecord)
        if placements and events:  # a replica of a unit the store knows (its events were accepted)
            self.ledger.record_placements(placements)
        return len(events) + len(requests) + len(phases)

    def _maybe_roll_up(self) -> None:
        """Roll finished replicas up in the background, a few at a time, at most once a minute."""
        if self._rollup is None and time.monotonic() - self._rolled_at >= ROLLUP_INTERVAL_S:
            self._rolled_at = time.monotonic()
            self._rollup = asyncio.get_running_loop().create_task(self.roll_up())

    async def roll_up(self) -> int:
        """Roll up every finished replica and checkpoint every long-running one, yielding the
        actor's loop between small batches; returns how many replicas were handled."""
        rolled = 0
        try:
            for step in (self.ledger.rollup, self.ledger.checkpoint):
                while True:
                    n = step(time.time(), limit=ROLLUP_BATCH_REPLICAS)
                    rolled += n
                    if n < ROLLUP_BATCH_REPLICAS:
                        break
                    await asyncio.sleep(0)
            return rolled
        finally:
            self._rollup = None

    def _intervals(
        self, app: str | None, function: str | None, since: float | None, until: float | None
    ) -> list[Interval]:
        intervals = self.ledger.intervals(app, function, since, until)
        if since is None and until is None:
            return intervals
        lo, hi = since if since is not None else float("-inf"), until if until is not None else float("inf")
        return [
            iv.model_copy(update={"start": max(iv.start, lo), "end": min(iv.end, hi)})
            for iv in intervals
            if iv.end > lo and iv.start < hi
        ]

    async def bill(
        self,
        app: str | None = None,
        since: float | None = None,
        until: float | None = None,
        by_day: bool = False,
        min_increment_s: str | None = None,
        function: str | None = None,
    ) -> list[dict[str, Any]]:
        intervals = self._intervals(app, function, since, until)
        minimum = Decimal(min_increment_s) if min_increment_s is not None else None
        lines = bill(intervals, load_price_table(self.prices_path), by_day=by_day, min_increment_s=minimum)
        return [line.model_dump(mode="json") for line in lines]

    async def usage(
        self,
        app: str | None = None,
        function: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> dict[str, Any]:
        """Intervals, bill lines and the request count of a selection (what `raygpu cost` needs)."""
        intervals = self._intervals(app, function, since, until)
        lines = bill(intervals, load_price_table(self.prices_path))
        requests = self.ledger.request_total(app, function, since, until)
        return {
            "intervals": [iv.model_dump() for iv in intervals],
            "bill": [line.model_dump(mode="json") for line in lines],
            "requests": requests,
        }

    async def call_stages(self, call_id: str) -> list[dict[str, Any]]:
        """The requests recorded under one call id: each stage of a pipeline, each run of a call."""
        if not isinstance(call_id, str) or not 1 <= len(call_id) <= 128:
            raise ValueError("a call id is 1-128 characters")
        return self.ledger.call_stages(call_id)

    async def start_phases(self, app: str | None = None) -> dict[str, dict[str, Any]]:
        """The latest replica start of each function, by phase: {"app/function": {replica, ts, phases}}."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.ledger.start_phases(app):
            key = f"{row['app']}/{row['function']}"
            entry = latest.get(key)
            if entry is None or (entry["replica"] != row["replica"] and row["ts"] >= entry["ts"]):
                entry = latest[key] = {"replica": row["replica"], "ts": row["ts"], "phases": {}}
            if entry["replica"] == row["replica"]:
                entry["phases"][row["phase"]] = row["seconds"]
        return latest

    async def replica_start_phases(self, app: str, function: str) -> dict[str, dict[str, float]]:
        """Every recorded replica start of a function: {replica: {phase: seconds}}."""
        out: dict[str, dict[str, float]] = {}
        for row in self.ledger.start_phases(app):
            if row["function"] == function:
                out.setdefault(row["replica"], {})[row["phase"]] = row["seconds"]
        return out

    async def watch_nodes(self) -> None:
        """Record node lifetimes every NODE_POLL_S (the GCS forgets dead nodes; the ledger keeps them)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                nodes = await loop.run_in_executor(None, list_nodes)
                self.ledger.record_nodes(
                    [{**n.model_dump(), "gpus": n.gpus, "accelerator": n.accelerator} for n in nodes], time.time()
                )
            except Exception as exc:
                logger.warning("raygpu meter: recording nodes failed (%s)", exc)
            await asyncio.sleep(NODE_POLL_S)

    async def node_bill(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """GPU-seconds of GPU nodes alive next to those billed to functions (billing/node_bill.py)."""
        until = time.time() if until is None else until
        nodes = [NodeLifetime.model_validate(n) for n in self.ledger.nodes(since)]
        intervals = self._intervals(None, None, since, until)
        return node_bill(nodes, intervals, self.ledger.placements(), since=since, until=until).model_dump()

    async def intervals(self, app: str | None = None, function: str | None = None) -> list[dict[str, Any]]:
        return [iv.model_dump() for iv in self.ledger.intervals(app, function)]

    async def request_counts(self, app: str | None = None) -> dict[str, dict[int, int]]:
        return self.ledger.request_counts(app)


def start_meter(
    ledger_path: str,
    prices_path: str | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
    *,
    store_actor: str,
    store_namespace: str,
) -> Any:
    handle = (
        ray.remote(Meter)
        .options(
            name=METER_ACTOR_NAME,
            namespace=METER_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=-1,
            max_concurrency=1000,
            resources={"node:__internal_head__": 0.001},
        )
        .remote(ledger_path, prices_path, metrics_port, metrics_host, store_actor, store_namespace)
    )
    ray.get(handle.ping.remote())
    return handle
