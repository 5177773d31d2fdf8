"""Secrets in the control-plane database (the `secrets` table): key names in the clear, values only
as the ciphertext deployments/secrets.py makes; which live versions name each one."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from billing.schema_versions import transaction

SECRET_SCHEMA = """
-- Secrets: their key names in the clear, their values only encrypted (deployments/secrets.py).
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    keys TEXT NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""


class SecretRows:
    """The `secrets` table (a part of deployments.store.db.StateDB: uses its connection)."""

    conn: sqlite3.Connection

    def put_secret(self, name: str, keys: list[str], ciphertext: bytes, replace: bool) -> bool:
        """Store a secret; False when it exists and `replace` is not set."""
        now = time.time()
        with transaction(self.conn):
            exists = self.conn.execute("SELECT 1 FROM secrets WHERE name = ?", (name,)).fetchone() is not None
            if exists and not replace:
                return False
            self.conn.execute(
                "INSERT INTO secrets (name, keys, ciphertext, created_at, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET keys = excluded.keys, ciphertext = excluded.ciphertext, "
                "updated_at = excluded.updated_at",
                (name, json.dumps(sorted(keys)), ciphertext, now, now),
            )
        return True

    def secret_ciphertext(self, name: str) -> bytes | None:
        row = self.conn.execute("SELECT ciphertext FROM secrets WHERE name = ?", (name,)).fetchone()
        return bytes(row["ciphertext"]) if row else None

    def secret_rows(self) -> list[dict[str, Any]]:
        """Each secret's name, key names and times (never values)."""
        rows = self.conn.execute("SELECT name, keys, created_at, updated_at FROM secrets ORDER BY name").fetchall()
        return [
            {
                "name": r["name"],
                "keys": json.loads(r["keys"]),
                "created_at": r["created_at"],
                "updated_at": r["updated_at"],
            }
            for r in rows
        ]

    def delete_secret(self, name: str) -> bool:
        with transaction(self.conn):
            return self.conn.execute("DELETE FROM secrets WHERE name = ?", (name,)).rowcount == 1

    def secrets_in_use(self) -> dict[str, list[str]]:
        """Secret name -> the apps whose live or deploying version names it."""
        used: dict[str, set[str]] = {}
        for r in self.conn.execute(
            "SELECT app, functions FROM app_versions WHERE status IN ('live', 'deploying')"
        ).fetchall():
            for entry in json.loads(r["functions"]):
                for name in entry.get("spec", {}).get("secrets", []):
                    used.setdefault(name, set()).add(r["app"])
        return {name: sorted(apps) for name, apps in used.items()}

    def function_secrets(self, app: str, version: int, function: str) -> list[str] | None:
        """The secrets one function of a live or deploying version names (None: no such function)."""
        row = self.conn.execute(
            "SELECT functions FROM app_versions WHERE app = ? AND version = ? AND status IN ('live', 'deploying')",
            (app, version),
        ).fetchone()
        if row is None:
            return None
        for entry in json.loads(row["functions"]):
            if entry.get("spec", {}).get("name") == function:
                return list(entry["spec"].get("secrets", []))
        return None
