"""Model weight versions in the control-plane database (the `weights` table): what each torch
model's replicas load, versioned by deploys and `raygpu weights push`."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from billing.schema_versions import transaction


class WeightRows:
    """The `weights` table (a part of deployments.store.db.StateDB: uses its connection)."""

    conn: sqlite3.Connection

    def set_weights(
        self,
        app: str,
        function: str,
        model: str,
        path: str,
        fingerprint: str,
        source: str,
        only_if_changed: bool = False,
    ) -> int:
        """Record weights for a model; return its version. With `only_if_changed`, nothing new is
        recorded when the same file is named again: by a deploy, when the last deploy named it (so
        a redeploy keeps weights pushed since), otherwise when it is the latest version."""
        with transaction(self.conn):
            latest = self.conn.execute(
                "SELECT version, fingerprint FROM weights WHERE app = ? AND function = ? AND model = ? "
                "ORDER BY version DESC LIMIT 1",
                (app, function, model),
            ).fetchone()
            if latest is not None and only_if_changed:
                compared = latest
                if source == "deploy":
                    compared = self.conn.execute(
                        "SELECT version, fingerprint FROM weights WHERE app = ? AND function = ? AND model = ? "
                        "AND source = 'deploy' ORDER BY version DESC LIMIT 1",
                        (app, function, model),
                    ).fetchone()
                if compared is not None and compared["fingerprint"] == fingerprint:
                    return latest["version"]
            version = (latest["version"] if latest else 0) + 1
            self.conn.execute(
                "INSERT INTO weights (app, function, model, version, path, fingerprint, source, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (app, function, model, version, path, fingerprint, source, time.time()),
            )
        return version

    def current_weights(self, app: str, function: str) -> dict[str, dict[str, Any]]:
        """Latest weights of each model of a function: {model: {version, path, fingerprint}}."""
        rows = self.conn.execute(
            "SELECT model, version, path, fingerprint, source, created_at FROM weights w WHERE app = ? AND function = ? "
            "AND version = (SELECT MAX(version) FROM weights WHERE app = w.app AND function = w.function AND model = w.model)",
            (app, function),
        ).fetchall()
        return {r["model"]: {k: r[k] for k in ("version", "path", "fingerprint", "source", "created_at")} for r in rows}
