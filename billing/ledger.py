"""The billing ledger: lifecycle events and per-request records in SQLite (WAL), idempotent by id;
the intervals and metric totals they roll up into (billing/totals.py) and node lifetimes
(billing/node_records.py) live in the same file.

No Ray: the meter actor owns the one writing connection; `raygpu bill` reads through the actor.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from billing.call_stages import CallStages, add_call_ids
from billing.intervals import Interval, LifecycleEvent, ReplicaTimeline, TimelineState, event_order, replica_intervals
from billing.node_records import NodeRecords
from billing.records import RequestRecord
from billing.schema_versions import open_database, transaction
from billing.totals import MetricTotals, Totals, migrate_to_totals

logger = logging.getLogger(f"ray.serve.{__name__}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    replica TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts REAL NOT NULL,
    gpus REAL NOT NULL,
    accelerator TEXT
);
CREATE INDEX IF NOT EXISTS events_by_function ON events (app, function, ts);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    replica TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    ts REAL NOT NULL,
    call_id TEXT,
    attempt INTEGER
);
CREATE INDEX IF NOT EXISTS requests_by_function ON requests (app, function, ts);
CREATE INDEX IF NOT EXISTS events_by_replica ON events (app, function, replica, ts);
CREATE TABLE IF NOT EXISTS replicas (
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    replica TEXT NOT NULL,
    first_ts REAL NOT NULL,
    last_ts REAL NOT NULL,
    stopped INTEGER NOT NULL DEFAULT 0,
    rolled INTEGER NOT NULL DEFAULT 0,
    cut_ts REAL,
    cut_state TEXT,
    PRIMARY KEY (app, function, replica)
);
CREATE INDEX IF NOT EXISTS replicas_unrolled ON replicas (rolled, last_ts);
CREATE TABLE IF NOT EXISTS intervals (
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    replica TEXT NOT NULL,
    phase TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    gpus REAL NOT NULL,
    accelerator TEXT
);
CREATE INDEX IF NOT EXISTS intervals_by_end ON intervals (end);
CREATE TABLE IF NOT EXISTS totals (
    metric TEXT NOT NULL,
    labels TEXT NOT NULL,
    value REAL NOT NULL,
    buckets TEXT,
    PRIMARY KEY (metric, labels)
);
CREATE TABLE IF NOT EXISTS quarantine (
    source TEXT NOT NULL,
    row TEXT NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    node_type TEXT NOT NULL,
    accelerator TEXT,
    gpus REAL NOT NULL,
    is_head INTEGER NOT NULL,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS replica_nodes (
    replica TEXT PRIMARY KEY,
    node_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS start_phases (
    replica TEXT NOT NULL,
    phase TEXT NOT NULL,
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    seconds REAL NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (replica, phase)
);
"""

# Version 1: events, requests, start phases; 2: the quarantine table for invalid rows; 3: replicas,
# rolled-up intervals and metric totals (restart and bills cost what recent history costs); 4: node
# lifetimes and the node of each replica (`raygpu bill --nodes`); 5: the call id and attempt of each
# request (`raygpu calls show`).
LEDGER_SCHEMA_VERSION = 5
# A replica silent this long without a stop event is gone: its events are rolled up too.
ROLLUP_AFTER_S = 3600.0
# A replica running longer than this is checkpointed: its closed intervals are rolled up, its events
# dropped, its open phase kept as a state the next events continue from.
CHECKPOINT_AFTER_S = 3600.0
EVENT_FIELDS = ("id", "app", "function", "replica", "kind", "ts", "gpus", "accelerator")
PHASE_FIELDS = ("replica", "phase", "app", "function", "seconds", "ts")
REQUEST_FIELDS = (
    "id",
    "app",
    "function",
    "replica",
    "status",
    "latency_s",
    "bytes_in",
    "bytes_out",
    "ts",
    "call_id",
    "attempt",
)


class Ledger(MetricTotals, NodeRecords, CallStages):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # What is billed must survive a power loss once the meter has acknowledged it: every commit
        # reaches the disk (a batch per replica per second, so the cost is small).
        self.conn = open_database(
            self.path,
            synchronous="FULL",
            schema=SCHEMA,
            version=LEDGER_SCHEMA_VERSION,
            migrations=LEDGER_MIGRATIONS,
            what="billing ledger",
        )
        self.conn.execute("CREATE INDEX IF NOT EXISTS requests_by_call ON requests (call_id) WHERE call_id IS NOT NULL")

    def apply(
        self, events: Iterable[dict[str, Any]], requests: Iterable[dict[str, Any]]
    ) -> tuple[list[dict], list[dict]]:
        """Insert what is new; return the events and requests that were not already recorded. An
        event of a replica already rolled up is a resend of one the ledger had: it is ignored."""
        events = list(events)
        cuts = self._cuts({(e["app"], e["function"], e["replica"]) for e in events})
        with transaction(self.conn):
            new_events = self._insert_new(
                "events",
                EVENT_FIELDS,
                (e for e in events if e["ts"] > cuts.get((e["app"], e["function"], e["replica"]), float("-inf"))),
            )
            new_requests = self._insert_new("requests", REQUEST_FIELDS, requests)
            self._track_replicas(new_events)
            totals = Totals()
            for r in new_requests:
                totals.count("requests", (r["app"], r["function"], str(r["status"])), 1)
                totals.observe("request_duration", (r["app"], r["function"]), max(float(r["latency_s"]), 0.0))
            self._add_totals(totals)
            return new_events, new_requests

    def _cuts(self, keys: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], float]:
        """Per replica, the time up to which its events are already rolled up (infinite once the
        replica is rolled up whole): an event at or before it is a resend, and is ignored."""
        cuts: dict[tuple[str, str, str], float] = {}
        for key in keys:
            row = self.conn.execute(
                "SELECT rolled, cut_ts FROM replicas WHERE app = ? AND function = ? AND replica = ?", key
            ).fetchone()
            if row is not None and (row["rolled"] or row["cut_ts"] is not None):
                cuts[key] = float("inf") if row["rolled"] else row["cut_ts"]
        return cuts

    def checkpoints(self, where: str = "", params: tuple[Any, ...] = ()) -> dict[tuple[str, str, str], TimelineState]:
        """The checkpointed state of replicas not rolled up whole."""
        return {
            (r["app"], r["function"], r["replica"]): TimelineState.model_validate_json(r["cut_state"])
            for r in self.conn.execute(
                "SELECT app, function, replica, cut_state FROM replicas r WHERE rolled = 0 AND cut_state IS NOT NULL"
                + where,
                params,
            )
        }

    def _track_replicas(self, events: list[dict[str, Any]]) -> None:
        spans: dict[tuple[str, str, str], list[float]] = {}
        for e in events:
            key = (e["app"], e["function"], e["replica"])
            span = spans.setdefault(key, [e["ts"], e["ts"], 0])
            span[0], span[1] = min(span[0], e["ts"]), max(span[1], e["ts"])
            span[2] = span[2] or int(e["kind"] == "stopped")
        self.conn.executemany(
            "INSERT INTO replicas (app, function, replica, first_ts, last_ts, stopped) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(app, function, replica) DO UPDATE SET first_ts = MIN(first_ts, excluded.first_ts), "
            "last_ts = MAX(last_ts, excluded.last_ts), stopped = MAX(stopped, excluded.stopped)",
            [(*key, first, last, stopped) for key, (first, last, stopped) in spans.items()],
        )

    def rollup(self, now: float, limit: int = 50, lost_after_s: float = ROLLUP_AFTER_S) -> int:
        """Roll up to `limit` finished replicas (stopped, or silent for `lost_after_s`): their events
        become closed intervals and metric totals, and the events (heartbeats above all) go.
        Returns how many replicas were rolled up."""
        finished = self.conn.execute(
            "SELECT app, function, replica FROM replicas WHERE rolled = 0 AND (stopped = 1 OR last_ts < ?) LIMIT ?",
            (now - lost_after_s, limit),
        ).fetchall()
        for app, function, replica in finished:
            key = (app, function, replica)
            events, state = self._replica_events(key)
            intervals = replica_intervals(events, {key: state} if state is not None else None)
            with transaction(self.conn):
                self._keep_intervals(intervals)
                self.conn.execute("DELETE FROM events WHERE app = ? AND function = ? AND replica = ?", key)
                self.conn.execute("UPDATE replicas SET rolled = 1 WHERE app = ? AND function = ? AND replica = ?", key)
        return len(finished)

    def checkpoint(self, now: float, limit: int = 50, older_than_s: float = CHECKPOINT_AFTER_S) -> int:
        """Checkpoint up to `limit` replicas still running after `older_than_s` since their start or
        last checkpoint: their closed intervals are kept, their events dropped, their open phase
        kept as the state later events continue from. Returns how many were checkpointed."""
        running = self.conn.execute(
            "SELECT app, function, replica FROM replicas WHERE rolled = 0 AND stopped = 0 "
            "AND COALESCE(cut_ts, first_ts) < ? AND last_ts > COALESCE(cut_ts, first_ts) LIMIT ?",
            (now - older_than_s, limit),
        ).fetchall()
        for app, function, replica in running:
            key = (app, function, replica)
            events, state = self._replica_events(key)
            if not events:
                continue
            timeline = ReplicaTimeline(app, function, replica, state)
            closed = [iv for e in events for iv in timeline.apply(e)]
            cut = events[-1].ts
            with transaction(self.conn):
                self._keep_intervals(closed)
                self.conn.execute(
                    "DELETE FROM events WHERE app = ? AND function = ? AND replica = ? AND ts <= ?", (*key, cut)
                )
                self.conn.execute(
                    "UPDATE replicas SET cut_ts = ?, cut_state = ? WHERE app = ? AND function = ? AND replica = ?",
                    (cut, timeline.state().model_dump_json(), *key),
                )
        return len(running)

    def _replica_events(self, key: tuple[str, str, str]) -> tuple[list[LifecycleEvent], TimelineState | None]:
        """One replica's events not rolled up yet, in lifecycle order, and its checkpointed state."""
        events = sorted(
            self._valid_rows(
                "events",
                EVENT_FIELDS,
                LifecycleEvent,
                "SELECT rowid, * FROM events WHERE app = ? AND function = ? AND replica = ?",
                list(key),
            ),
            key=event_order,
        )
        return events, self.checkpoints(" AND app = ? AND function = ? AND replica = ?", key).get(key)

    def _keep_intervals(self, intervals: list[Interval]) -> None:
        """Store closed intervals and add them to the metric totals (inside a transaction)."""
        totals = Totals()
        for iv in intervals:
            totals.count("gpu_seconds", (iv.app, iv.function, iv.accelerator or "", iv.phase), iv.seconds * iv.gpus)
            if iv.phase == "cold_start":
                totals.count("cold_starts", (iv.app, iv.function), 1)
                totals.observe("cold_start_duration", (iv.app, iv.function), iv.seconds)
        self.conn.executemany(
            "INSERT INTO intervals (app, function, replica, phase, start, end, gpus, accelerator) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (iv.app, iv.function, iv.replica, iv.phase, iv.start, iv.end, iv.gpus, iv.accelerator)
                for iv in intervals
            ],
        )
        self._add_totals(totals)

    def intervals(
        self,
        app: str | None = None,
        function: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Interval]:
        """Closed phase intervals overlapping [since, until) (not clipped): rolled-up ones from their
        table, the rest from the events of replicas not rolled up yet, both filtered in SQL."""
        lo = since if since is not None else float("-inf")
        hi = until if until is not None else float("inf")
        clause, params = " WHERE end > ? AND start < ?", [lo, hi]
        unrolled, unrolled_params = " WHERE r.rolled = 0 AND r.last_ts >= ? AND r.first_ts < ?", [lo, hi]
        for column, value in (("app", app), ("function", function)):
            if value:
                clause += f" AND {column} = ?"
                params.append(value)
                unrolled += f" AND r.{column} = ?"
                unrolled_params.append(value)
        rolled = [
            Interval(
                **{k: r[k] for k in ("app", "function", "replica", "phase", "start", "end", "gpus", "accelerator")}
            )
            for r in self.conn.execute("SELECT * FROM intervals" + clause, params)
        ]
        events = self._valid_rows(
            "events",
            EVENT_FIELDS,
            LifecycleEvent,
            "SELECT e.rowid, e.* FROM replicas r JOIN events e ON e.app = r.app AND e.function = r.function "
            "AND e.replica = r.replica" + unrolled,
            unrolled_params,
        )
        resumed = self.checkpoints(unrolled.replace(" WHERE r.rolled = 0", ""), tuple(unrolled_params))
        return rolled + [iv for iv in replica_intervals(events, resumed) if iv.end > lo and iv.start < hi]

    def unrolled_events(self) -> list[LifecycleEvent]:
        """Events of replicas not rolled up yet (what a restarted meter replays)."""
        return self.events()

    def _insert_new(self, table: str, fields: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> list[dict]:
        sql = f"INSERT OR IGNORE INTO {table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})"
        rows = list(rows)
        if "id" not in fields:
            return [row for row in rows if self.conn.execute(sql, tuple(row.get(f) for f in fields)).rowcount]
        # By id: find the ones already recorded in a few lookups, then insert the rest in one go.
        known: set[str] = set()
        ids = list({row["id"] for row in rows})
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            known.update(
                r[0]
                for r in self.conn.execute(f"SELECT id FROM {table} WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
            )
        new: list[dict[str, Any]] = []
        for row in rows:
            if row["id"] not in known:
                known.add(row["id"])  # a duplicate inside the batch counts once
                new.append(row)
        self.conn.executemany(sql, [tuple(row.get(f) for f in fields) for row in new])
        return new

    def apply_start_phases(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert each replica's start phases once; return the rows that were new."""
        rows = [
            {
                "replica": r["replica"],
                "phase": phase,
                "app": r["app"],
                "function": r["function"],
                "seconds": seconds,
                "ts": r["ts"],
            }
            for r in records
            for phase, seconds in r["phases"].items()
        ]
        with transaction(self.conn):
            new = self._insert_new("start_phases", PHASE_FIELDS, rows)
            totals = Totals()
            for r in new:
                totals.observe("start_phase", (r["app"], r["function"], r["phase"]), max(float(r["seconds"]), 0.0))
            self._add_totals(totals)
            return new

    def start_phases(self, app: str | None = None) -> list[dict[str, Any]]:
        query, params = "SELECT * FROM start_phases", []
        if app:
            query += " WHERE app = ?"
            params.append(app)
        return [{k: r[k] for k in PHASE_FIELDS} for r in self.conn.execute(query + " ORDER BY ts", params)]

    def _valid_rows(
        self, table: str, fields: tuple[str, ...], model: type[BaseModel], sql: str, params: list[Any]
    ) -> Iterator[Any]:
        """Rows of `table` as `model`s; a row that is not one (an older version wrote it) is moved
        to the quarantine table with a warning instead of stopping the reader."""
        bad: list[tuple[int, dict[str, Any], str]] = []
        for r in self.conn.execute(sql, params):
            row = {k: r[k] for k in fields}
            try:
                yield model.model_validate(row)
            except ValidationError as exc:
                bad.append((r["rowid"], row, str(exc.errors()[0]["msg"])))
        if bad:
            self.quarantine(table, bad)

    def quarantine(self, table: str, rows: list[tuple[int, dict[str, Any], str]]) -> None:
        now = time.time()
        with transaction(self.conn):
            for rowid, row, reason in rows:
                self.conn.execute(
                    "INSERT INTO quarantine (source, row, reason, quarantined_at) VALUES (?, ?, ?, ?)",
                    (table, json.dumps(row, default=str), reason, now),
                )
                self.conn.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))
        logger.warning(
            "raygpu ledger: moved %d invalid %s row(s) to the quarantine table (first: %s)",
            len(rows),
            table,
            rows[0][2],
        )

    def quarantined(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT source, row, reason, quarantined_at FROM quarantine")]

    def events(self, app: str | None = None, function: str | None = None) -> list[LifecycleEvent]:
        query, params = "SELECT rowid, * FROM events WHERE 1=1", []
        if app:
            query += " AND app = ?"
            params.append(app)
        if function:
            query += " AND function = ?"
            params.append(function)
        return list(self._valid_rows("events", EVENT_FIELDS, LifecycleEvent, query, params))

    @staticmethod
    def _where(app: str | None, function: str | None, since: float | None, until: float | None) -> tuple[str, list]:
        clause, params = " WHERE 1=1", []
        for column, op, value in (
            ("app", "=", app),
            ("function", "=", function),
            ("ts", ">=", since),
            ("ts", "<", until),
        ):
            if value is not None and value != "":
                clause += f" AND {column} {op} ?"
                params.append(value)
        return clause, params

    def requests(
        self,
        app: str | None = None,
        function: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        clause, params = self._where(app, function, since, until)
        sql = "SELECT rowid, * FROM requests" + clause + " ORDER BY ts"
        for record in self._valid_rows("requests", REQUEST_FIELDS, RequestRecord, sql, params):
            yield record.model_dump()

    def request_total(
        self,
        app: str | None = None,
        function: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> int:
        clause, params = self._where(app, function, since, until)
        return self.conn.execute("SELECT COUNT(*) FROM requests" + clause, params).fetchone()[0]

    def request_counts(self, app: str | None = None) -> dict[str, dict[int, int]]:
        query, params = "SELECT app, function, status, COUNT(*) AS n FROM requests", []
        if app:
            query += " WHERE app = ?"
            params.append(app)
        out: dict[str, dict[int, int]] = {}
        for r in self.conn.execute(query + " GROUP BY app, function, status", params):
            out.setdefault(f"{r['app']}/{r['function']}", {})[r["status"]] = r["n"]
        return out


LEDGER_MIGRATIONS = {3: migrate_to_totals, 5: add_call_ids}
