"""Scheduled runs in the control-plane database: `schedule_runs` (one row per run: the due time it
ran for, or a manual trigger; the spawned call it made, or why it was skipped) and `schedule_state`
(each scheduled function's last due time handled, which a restarted scheduler continues from)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from billing.schema_versions import transaction

SCHEDULE_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedule_runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    due_at REAL,
    created_at REAL NOT NULL,
    call_id TEXT,
    skipped TEXT
);
-- at most one run per due time of a function, whatever restarts
CREATE UNIQUE INDEX IF NOT EXISTS schedule_runs_due ON schedule_runs (app, function, due_at)
    WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS schedule_runs_recent ON schedule_runs (app, function, run_id);
CREATE INDEX IF NOT EXISTS schedule_runs_by_call ON schedule_runs (call_id) WHERE call_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS schedule_runs_by_created ON schedule_runs (created_at);
CREATE TABLE IF NOT EXISTS schedule_state (
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    last_due REAL NOT NULL,
    PRIMARY KEY (app, function)
);
"""

# Run records are kept this long (the last due time handled is kept apart, in schedule_state).
SCHEDULE_RUN_RETENTION_S = 30 * 24 * 3600.0

_RUN_COLUMNS = (
    "SELECT r.run_id, r.app, r.function, r.version, r.trigger, r.due_at, r.created_at, r.call_id, r.skipped, "
    "c.status, c.started_at, c.finished_at, c.error FROM schedule_runs r LEFT JOIN calls c ON c.call_id = r.call_id "
)


def _run(row: sqlite3.Row) -> dict[str, Any]:
    if row["skipped"] is not None:
        status = "skipped"
    elif row["status"] is None:
        status = "expired"  # its call record is past retention
    else:
        status = row["status"]
    error = json.loads(row["error"]) if row["error"] is not None else None
    return {
        "run_id": row["run_id"],
        "app": row["app"],
        "function": row["function"],
        "version": row["version"],
        "trigger": row["trigger"],
        "due_at": row["due_at"],
        "created_at": row["created_at"],
        "call_id": row["call_id"],
        "status": status,
        "reason": row["skipped"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "error": error,
    }


class ScheduleRows:
    """The schedule tables (a part of deployments.store.db.StateDB: uses its connection)."""

    conn: sqlite3.Connection

    def scheduled_run(self, app: str, function: str, due_at: float) -> dict[str, Any] | None:
        """The run recorded for one due time of a function, if any."""
        row = self.conn.execute(
            _RUN_COLUMNS + "WHERE r.app = ? AND r.function = ? AND r.due_at = ?", (app, function, due_at)
        ).fetchone()
        return _run(row) if row else None

    def record_run(
        self,
        app: str,
        function: str,
        version: int,
        trigger: str,
        due_at: float | None,
        now: float,
        call_id: str | None,
        skipped: str | None,
    ) -> dict[str, Any]:
        """Record a run (and, for a due time, that it was handled); returns the run."""
        with transaction(self.conn):
            run_id = self.conn.execute(
                "INSERT INTO schedule_runs (app, function, version, trigger, due_at, created_at, call_id, skipped) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (app, function, version, trigger, due_at, now, call_id, skipped),
            ).lastrowid
            if due_at is not None:
                self.conn.execute(
                    "INSERT INTO schedule_state (app, function, last_due) VALUES (?, ?, ?) "
                    "ON CONFLICT(app, function) DO UPDATE SET last_due = MAX(last_due, excluded.last_due)",
                    (app, function, due_at),
                )
        row = self.conn.execute(_RUN_COLUMNS + "WHERE r.run_id = ?", (run_id,)).fetchone()
        return _run(row)

    def last_due(self, app: str, function: str) -> float | None:
        """The latest due time of the function that was handled (run or skipped)."""
        row = self.conn.execute(
            "SELECT last_due FROM schedule_state WHERE app = ? AND function = ?", (app, function)
        ).fetchone()
        return float(row["last_due"]) if row else None

    def open_run(self, app: str, function: str) -> dict[str, Any] | None:
        """A run of the function whose call is still pending or running, if any."""
        row = self.conn.execute(
            _RUN_COLUMNS + "WHERE r.call_id IN (SELECT call_id FROM calls WHERE app = ? AND function = ? "
            "AND status IN ('pending', 'running')) ORDER BY r.run_id DESC LIMIT 1",
            (app, function),
        ).fetchone()
        return _run(row) if row else None

    def functions_with_open_runs(self) -> set[str]:
        """Every "app/function" with a run whose call is still pending or running (from the open calls)."""
        rows = self.conn.execute(
            "SELECT DISTINCT c.app, c.function FROM calls c WHERE c.status IN ('pending', 'running') "
            "AND EXISTS (SELECT 1 FROM schedule_runs r WHERE r.call_id = c.call_id)"
        ).fetchall()
        return {f"{r['app']}/{r['function']}" for r in rows}

    def runs(self, app: str, function: str, limit: int) -> list[dict[str, Any]]:
        """The function's latest runs, newest first."""
        rows = self.conn.execute(
            _RUN_COLUMNS + "WHERE r.app = ? AND r.function = ? ORDER BY r.run_id DESC LIMIT ?",
            (app, function, limit),
        ).fetchall()
        return [_run(r) for r in rows]

    def is_scheduled_call(self, call_id: str) -> bool:
        """Whether a spawned call is a run the schedule made (not a manual one)."""
        row = self.conn.execute(
            "SELECT 1 FROM schedule_runs WHERE call_id = ? AND trigger = 'schedule'", (call_id,)
        ).fetchone()
        return row is not None

    def schedule_retention_batch(self, now: float, limit: int) -> int:
        with transaction(self.conn):
            return self.conn.execute(
                "DELETE FROM schedule_runs WHERE run_id IN (SELECT run_id FROM schedule_runs WHERE created_at < ? "
                "LIMIT ?)",
                (now - SCHEDULE_RUN_RETENTION_S, limit),
            ).rowcount
