"""The stages of one call in the ledger: each request a replica recorded under a call id (each
function of a pipeline, each run of a retried call), for `raygpu calls show`. No Ray."""

from __future__ import annotations

import sqlite3
from typing import Any


def add_call_ids(conn: Any) -> None:
    """Version 5: requests carry the call id and attempt they ran under (NULL for older rows)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    if "call_id" not in columns:
        conn.execute("ALTER TABLE requests ADD COLUMN call_id TEXT")
    if "attempt" not in columns:
        conn.execute("ALTER TABLE requests ADD COLUMN attempt INTEGER")


class CallStages:
    """Ledger mixin: the requests recorded under one call id."""

    conn: sqlite3.Connection

    def call_stages(self, call_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Every request recorded under `call_id` (each stage of a pipeline, each run of a call), in
        the order they started."""
        rows = self.conn.execute(
            "SELECT app, function, replica, status, latency_s, ts, attempt FROM requests WHERE call_id = ? "
            "ORDER BY ts - latency_s LIMIT ?",
            (call_id, limit),
        )
        return [
            {
                "app": r["app"],
                "function": r["function"],
                "replica": r["replica"],
                "attempt": r["attempt"] or 1,
                "started_at": r["ts"] - r["latency_s"],
                "duration_s": r["latency_s"],
                "status": r["status"],
            }
            for r in rows
        ]
