"""Node lifetimes in the ledger: which GPU nodes were alive when, and which node each replica ran on,
recorded by the meter (what `raygpu bill --nodes` compares with the functions' bill, node_bill.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from billing.schema_versions import transaction


class NodeRecords:
    """The ledger's node records (a part of billing.ledger.Ledger: uses its connection)."""

    conn: sqlite3.Connection

    def record_nodes(self, nodes: Iterable[dict[str, Any]], now: float) -> None:
        """Node lifetimes from one look at the cluster: alive nodes are seen now, dead ones end when
        the cluster says, and recorded nodes the cluster no longer lists ended when last seen."""
        nodes = list(nodes)
        listed = {n["node_id"] for n in nodes}
        with transaction(self.conn):
            for n in nodes:
                started = n.get("started_at") or now
                self.conn.execute(
                    "INSERT INTO nodes (node_id, node_type, accelerator, gpus, is_head, started_at, last_seen, ended_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                    "last_seen = CASE WHEN excluded.ended_at IS NULL THEN excluded.last_seen ELSE nodes.last_seen END, "
                    "ended_at = COALESCE(nodes.ended_at, excluded.ended_at)",
                    (
                        n["node_id"],
                        n.get("node_type") or "",
                        n.get("accelerator"),
                        float(n.get("gpus") or 0.0),
                        int(bool(n.get("is_head"))),
                        started,
                        now,
                        None if n.get("alive") else (n.get("ended_at") or now),
                    ),
                )
            for (node_id,) in self.conn.execute("SELECT node_id FROM nodes WHERE ended_at IS NULL").fetchall():
                if node_id not in listed:
                    self.conn.execute("UPDATE nodes SET ended_at = last_seen WHERE node_id = ?", (node_id,))

    def record_placements(self, placements: Iterable[dict[str, Any]]) -> None:
        """The node each replica runs on (recorded once per replica)."""
        with transaction(self.conn):
            self.conn.executemany(
                "INSERT OR IGNORE INTO replica_nodes (replica, node_id) VALUES (?, ?)",
                [(p["replica"], p["node_id"]) for p in placements],
            )

    def nodes(self, since: float | None = None) -> list[dict[str, Any]]:
        query, params = "SELECT * FROM nodes", []
        if since is not None:
            query += " WHERE ended_at IS NULL OR ended_at > ?"
            params.append(since)
        return [dict(r) for r in self.conn.execute(query + " ORDER BY started_at", params)]

    def placements(self) -> dict[str, str]:
        return {r["replica"]: r["node_id"] for r in self.conn.execute("SELECT replica, node_id FROM replica_nodes")}
