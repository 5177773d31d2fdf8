"""Metric totals in the ledger: the counters and histograms the Prometheus exporter (metrics.py)
serves, kept as running totals so a meter restart and a scrape cost what recent history costs."""

from __future__ import annotations

import bisect
import json
import sqlite3

# Histogram bounds of the metrics whose totals the ledger keeps (billing/metrics.py exports them).
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
COLD_START_BUCKETS_S = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
HISTOGRAM_BOUNDS = {
    "request_duration": REQUEST_BUCKETS_S,
    "cold_start_duration": COLD_START_BUCKETS_S,
    "start_phase": COLD_START_BUCKETS_S,
}


class Totals:
    """Counter and histogram increments gathered for one write."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, tuple[str, ...]], tuple[float, list[int] | None]] = {}

    def count(self, metric: str, labels: tuple[str, ...], value: float) -> None:
        current, buckets = self.items.get((metric, labels), (0.0, None))
        self.items[(metric, labels)] = (current + value, buckets)

    def observe(self, metric: str, labels: tuple[str, ...], value: float) -> None:
        bounds = HISTOGRAM_BOUNDS[metric]
        current, buckets = self.items.get((metric, labels), (0.0, None))
        buckets = buckets or [0] * (len(bounds) + 1)
        buckets[bisect.bisect_left(bounds, value)] += 1
        self.items[(metric, labels)] = (current + value, buckets)


class MetricTotals:
    """The ledger's metric totals (a part of billing.ledger.Ledger: uses its connection)."""

    conn: sqlite3.Connection

    def _add_totals(self, totals: Totals) -> None:
        for (metric, labels), (value, buckets) in totals.items.items():
            key = json.dumps(labels)
            row = self.conn.execute(
                "SELECT value, buckets FROM totals WHERE metric = ? AND labels = ?", (metric, key)
            ).fetchone()
            if row is not None:
                value += row["value"]
                if buckets is not None and row["buckets"]:
                    buckets = [a + b for a, b in zip(buckets, json.loads(row["buckets"]))]
            self.conn.execute(
                "INSERT OR REPLACE INTO totals (metric, labels, value, buckets) VALUES (?, ?, ?, ?)",
                (metric, key, value, json.dumps(buckets) if buckets is not None else None),
            )

    def totals(self) -> list[tuple[str, tuple[str, ...], float, list[int] | None]]:
        """(metric, labels, value, per-bucket counts) of everything the metrics count since the start."""
        return [
            (
                r["metric"],
                tuple(json.loads(r["labels"])),
                r["value"],
                json.loads(r["buckets"]) if r["buckets"] else None,
            )
            for r in self.conn.execute("SELECT metric, labels, value, buckets FROM totals")
        ]


def migrate_to_totals(conn: sqlite3.Connection) -> None:
    """2 -> 3: the replicas table and metric totals from what the ledger already holds (once)."""
    conn.execute(
        "INSERT OR IGNORE INTO replicas (app, function, replica, first_ts, last_ts, stopped) "
        "SELECT app, function, replica, MIN(ts), MAX(ts), MAX(kind = 'stopped') FROM events "
        "GROUP BY app, function, replica"
    )
    totals = Totals()
    for app, function, status, latency in conn.execute("SELECT app, function, status, latency_s FROM requests"):
        try:
            seconds = max(float(latency), 0.0)
        except (TypeError, ValueError):
            continue  # an invalid row: quarantined when it is next read
        totals.count("requests", (app, function, str(status)), 1)
        totals.observe("request_duration", (app, function), seconds)
    for app, function, phase, seconds in conn.execute("SELECT app, function, phase, seconds FROM start_phases"):
        try:
            totals.observe("start_phase", (app, function, phase), max(float(seconds), 0.0))
        except (TypeError, ValueError):
            continue
    for (metric, labels), (value, buckets) in totals.items.items():
        conn.execute(
            "INSERT OR REPLACE INTO totals (metric, labels, value, buckets) VALUES (?, ?, ?, ?)",
            (metric, json.dumps(labels), value, json.dumps(buckets) if buckets is not None else None),
        )
