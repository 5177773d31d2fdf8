"""Spawned calls in the control-plane database: the `calls` table (created, started, finished or
cancelled once each, their callbacks' delivery state, the open ones a restarted runner resumes) and
`call_payloads` (each call's arguments and result as JSON text, counted per app in `call_storage`).
Payloads are stored and handed on as the JSON text they came as: the store never parses them."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from billing.schema_versions import transaction
from deployments.calls.records import CallRecord


class CallRows:
    """The `calls` table (a part of deployments.store.db.StateDB: uses its connection)."""

    conn: sqlite3.Connection

    def create_call(self, record: CallRecord, method: str | None, arguments: bytes) -> None:
        """Record a pending call with its keyword arguments (a JSON object's text)."""
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO calls (call_id, app, function, method, status, created_at, arguments, callback) "
                "VALUES (?, ?, ?, ?, ?, ?, '', ?)",
                (
                    record.call_id,
                    record.app,
                    record.function,
                    method,
                    record.status,
                    record.created_at,
                    record.callback.model_dump_json() if record.callback else None,
                ),
            )
            self.conn.execute(
                "INSERT INTO call_payloads (call_id, app, arguments) VALUES (?, ?, ?)",
                (record.call_id, record.app, bytes(arguments)),
            )

    def call_storage(self, app: str) -> int:
        """Bytes of arguments and results the app's spawned calls keep."""
        row = self.conn.execute("SELECT bytes FROM call_storage WHERE app = ?", (app,)).fetchone()
        return int(row["bytes"]) if row else 0

    def call_result(self, call_id: str) -> bytes | None:
        """A finished call's result as JSON text (None when it has none)."""
        row = self.conn.execute("SELECT result FROM call_payloads WHERE call_id = ?", (call_id,)).fetchone()
        return bytes(row["result"]) if row is not None and row["result"] is not None else None

    def call(self, call_id: str) -> CallRecord | None:
        """A call's record without its result (`call_result` has that)."""
        row = self.conn.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        if row is None:
            return None
        return CallRecord(
            call_id=row["call_id"],
            app=row["app"],
            function=row["function"],
            status=row["status"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=json.loads(row["error"]) if row["error"] is not None else None,
            callback=json.loads(row["callback"]) if row["callback"] is not None else None,
            attempts=json.loads(row["attempts"]) if row["attempts"] is not None else [],
        )

    def call_work(self, call_id: str) -> tuple[str | None, bytes] | None:
        """The method and keyword arguments (JSON text) a spawned call runs with."""
        row = self.conn.execute(
            "SELECT c.method, p.arguments FROM calls c JOIN call_payloads p ON p.call_id = c.call_id "
            "WHERE c.call_id = ?",
            (call_id,),
        ).fetchone()
        return (row["method"], bytes(row["arguments"])) if row else None

    def start_call(self, call_id: str, now: float) -> bool:
        """pending -> running; False when the call is no longer pending (cancelled meanwhile)."""
        with transaction(self.conn):
            return (
                self.conn.execute(
                    "UPDATE calls SET status = 'running', started_at = ? WHERE call_id = ? AND status = 'pending'",
                    (now, call_id),
                ).rowcount
                == 1
            )

    def finish_call(
        self,
        call_id: str,
        status: str,
        result: bytes | None,
        error: dict[str, Any] | None,
        now: float,
        attempts: list[dict[str, Any]] | None = None,
    ) -> bool:
        """An open call ends with `status` (and the runs it took; a succeeded one with its result's
        JSON text); False when it had already ended (cancelled)."""
        with transaction(self.conn):
            ended = (
                self.conn.execute(
                    "UPDATE calls SET status = ?, finished_at = ?, error = ?, attempts = ? "
                    "WHERE call_id = ? AND status IN ('pending', 'running')",
                    (
                        status,
                        now,
                        json.dumps(error) if error is not None else None,
                        json.dumps(attempts) if attempts else None,
                        call_id,
                    ),
                ).rowcount
                == 1
            )
            if ended and status == "succeeded" and result is not None:
                self.conn.execute("UPDATE call_payloads SET result = ? WHERE call_id = ?", (bytes(result), call_id))
            return ended

    def cancel_call(self, call_id: str, now: float) -> str | None:
        """Cancel an open call; the status it had (a finished one is left as it was), None when unknown."""
        with transaction(self.conn):
            row = self.conn.execute("SELECT status FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            if row is None:
                return None
            if row["status"] in ("pending", "running"):
                self.conn.execute(
                    "UPDATE calls SET status = 'cancelled', finished_at = ?, "
                    "error = json_object('type', 'Cancelled', 'message', 'the call was cancelled') WHERE call_id = ?",
                    (now, call_id),
                )
            return row["status"]

    def set_callback(self, call_id: str, callback_json: str) -> None:
        with transaction(self.conn):
            self.conn.execute("UPDATE calls SET callback = ? WHERE call_id = ?", (callback_json, call_id))

    def open_call_count(self, app: str, unit: str) -> int:
        """Spawned calls of a function (or of any method of a class) not yet finished."""
        return self.conn.execute(
            "SELECT COUNT(*) FROM calls WHERE status IN ('pending', 'running') AND app = ? "
            "AND (function = ? OR function LIKE ? ESCAPE '\\')",
            (app, unit, unit.replace("_", "\\_") + ".%"),
        ).fetchone()[0]

    def open_calls(self) -> list[str]:
        """Calls pending or running, oldest first (a restarted runner takes them up again)."""
        rows = self.conn.execute(
            "SELECT call_id FROM calls WHERE status IN ('pending', 'running') ORDER BY created_at"
        ).fetchall()
        return [r["call_id"] for r in rows]

    def undelivered_callbacks(self) -> list[str]:
        """Finished calls whose webhook is neither delivered nor given up."""
        rows = self.conn.execute(
            "SELECT call_id FROM calls WHERE callback IS NOT NULL AND status IN ('succeeded', 'failed', 'cancelled') "
            "AND NOT json_extract(callback, '$.delivered') AND NOT json_extract(callback, '$.gave_up') "
            "ORDER BY finished_at"
        ).fetchall()
        return [r["call_id"] for r in rows]
