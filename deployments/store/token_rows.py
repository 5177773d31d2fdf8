"""App tokens and protection in the control-plane database (the `tokens` and `app_auth` tables):
only each token's SHA-256 hash is kept."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from typing import Any

from billing.schema_versions import transaction

TOKEN_PREFIX = "rgt_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenRows:
    """The `tokens` and `app_auth` tables (a part of deployments.store.db.StateDB: uses its connection)."""

    conn: sqlite3.Connection

    def create_token(self, app: str) -> tuple[str, str]:
        """Create a token for `app` and protect the app; return (token id, the token). Only its
        hash is stored."""
        token_id = secrets.token_hex(8)  # 64 bits: ids of one cluster do not collide
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO tokens (id, app, token_hash, created_at) VALUES (?, ?, ?, ?)",
                (token_id, app, hash_token(token), now),
            )
            self._set_protected(app, True, now)
        return token_id, token

    def _set_protected(self, app: str, protected: bool, now: float) -> None:
        self.conn.execute(
            "INSERT INTO app_auth (app, protected, changed_at) VALUES (?, ?, ?) "
            "ON CONFLICT(app) DO UPDATE SET protected = excluded.protected, changed_at = excluded.changed_at",
            (app, int(protected), now),
        )

    def set_protected(self, app: str, protected: bool) -> int:
        """Switch token protection of `app` on or off; off also revokes its active tokens (returned
        count), so switching it on again never revives an old token."""
        now = time.time()
        revoked = 0
        with transaction(self.conn):
            if not protected:
                revoked = self.conn.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE app = ? AND revoked_at IS NULL", (now, app)
                ).rowcount
            self._set_protected(app, protected, now)
        return revoked

    def protected_apps(self) -> list[str]:
        """Apps every route of which needs a token (even when none is active: then nobody gets in)."""
        return [r["app"] for r in self.conn.execute("SELECT app FROM app_auth WHERE protected = 1 ORDER BY app")]

    def is_protected(self, app: str) -> bool:
        row = self.conn.execute("SELECT protected FROM app_auth WHERE app = ?", (app,)).fetchone()
        return bool(row and row["protected"])

    def revoke_token(self, app: str, token_id: str) -> bool:
        with transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE app = ? AND id = ? AND revoked_at IS NULL",
                (time.time(), app, token_id),
            )
        return cur.rowcount > 0

    def tokens(self, app: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT id, app, created_at, revoked_at FROM tokens"
        params: tuple[Any, ...] = ()
        if app is not None:
            query += " WHERE app = ?"
            params = (app,)
        return [dict(r) for r in self.conn.execute(query + " ORDER BY created_at", params).fetchall()]

    def active_token_hashes(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self.conn.execute("SELECT app, token_hash FROM tokens WHERE revoked_at IS NULL"):
            out.setdefault(r["app"], []).append(r["token_hash"])
        return out
