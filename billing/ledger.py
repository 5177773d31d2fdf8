"""The billing ledger: lifecycle events and per-request records in SQLite (WAL), idempotent by id.

No Ray: the meter actor owns the one writing connection; `raygpu bill` reads through the actor.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from billing.intervals import LifecycleEvent
from billing.records import RequestRecord
from billing.schema_versions import migrate

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
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_function ON requests (app, function, ts);
CREATE TABLE IF NOT EXISTS quarantine (
    source TEXT NOT NULL,
    row TEXT NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at REAL NOT NULL
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

# Version 1: events, requests, start phases; 2: the quarantine table for invalid rows.
LEDGER_SCHEMA_VERSION = 2

EVENT_FIELDS = ("id", "app", "function", "replica", "kind", "ts", "gpus", "accelerator")
PHASE_FIELDS = ("replica", "phase", "app", "function", "seconds", "ts")
REQUEST_FIELDS = ("id", "app", "function", "replica", "status", "latency_s", "bytes_in", "bytes_out", "ts")


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        # What is billed must survive a power loss once the meter has acknowledged it: every commit
        # reaches the disk (a batch per replica per second, so the cost is small).
        self.conn.execute("PRAGMA synchronous=FULL")
        migrate(self.conn, SCHEMA, LEDGER_SCHEMA_VERSION, {}, "billing ledger")

    def apply(
        self, events: Iterable[dict[str, Any]], requests: Iterable[dict[str, Any]]
    ) -> tuple[list[dict], list[dict]]:
        """Insert what is new; return the events and requests that were not already recorded."""
        with self.conn:
            return self._insert_new("events", EVENT_FIELDS, events), self._insert_new(
                "requests", REQUEST_FIELDS, requests
            )

    def _insert_new(self, table: str, fields: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> list[dict]:
        sql = f"INSERT OR IGNORE INTO {table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})"
        return [row for row in rows if self.conn.execute(sql, tuple(row.get(f) for f in fields)).rowcount]

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
        with self.conn:
            return self._insert_new("start_phases", PHASE_FIELDS, rows)

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
        with self.conn:
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
