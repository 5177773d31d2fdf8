"""The control plane's SQLite database, one table per concern: `apps` (registry, live version),
`app_versions` (each deploy's spec), `version_payloads` (the code of live versions), `tokens`
(hashes), `app_auth` (whether an app is protected), `arrivals` and `scale_events` (what the
autoscaler learns from), `policy_state` (what it learned), `settings` (cluster settings, the webhook
signing key among them), `weights` (torch model weight versions), `calls` (spawned calls),
`secrets` (encrypted values), `schedule_runs` and `schedule_state` (scheduled functions' runs).

Plain SQLite in WAL mode with no Ray import; the store actor (deployments/store/actor.py) owns the
one connection that writes to it. The rows of spawned calls (call_rows.py), model weights
(weight_rows.py), secrets and schedules are read and written by parts of their own over the same connection; a spawned
call's arguments and result live in `call_payloads`, out of the rows the call runner sweeps, and
`call_storage` keeps each app's total of them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from billing.schema_versions import open_database, transaction
from deployments.calls.records import DEFAULT_CALL_RETENTION_S
from deployments.spec import version_app_name
from deployments.store.call_rows import CallRows
from deployments.store.schedule_rows import SCHEDULE_SCHEMA, ScheduleRows
from deployments.store.secret_rows import SECRET_SCHEMA, SecretRows
from deployments.store.token_rows import TokenRows
from deployments.store.weight_rows import WeightRows

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    live_version INTEGER,
    created_at REAL NOT NULL,
    deleted_at REAL,
    incarnation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS app_versions (
    app TEXT NOT NULL,
    version INTEGER NOT NULL,
    source TEXT NOT NULL,
    functions TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    live_at REAL,
    PRIMARY KEY (app, version)
);
CREATE TABLE IF NOT EXISTS version_payloads (
    app TEXT NOT NULL,
    version INTEGER NOT NULL,
    function TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (app, version, function)
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS arrivals (
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS arrivals_by_function ON arrivals (app, function, ts);
CREATE INDEX IF NOT EXISTS arrivals_by_ts ON arrivals (ts);
CREATE TABLE IF NOT EXISTS scale_events (
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    ts REAL NOT NULL,
    from_replicas INTEGER NOT NULL,
    to_replicas INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_state (
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (app, function)
);
CREATE TABLE IF NOT EXISTS app_auth (
    app TEXT PRIMARY KEY,
    protected INTEGER NOT NULL,
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS scale_events_by_function ON scale_events (app, function, ts);
CREATE INDEX IF NOT EXISTS scale_events_by_ts ON scale_events (ts);
CREATE TABLE IF NOT EXISTS weights (
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (app, function, model, version)
);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    method TEXT,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    arguments TEXT NOT NULL,
    result TEXT,
    error TEXT,
    callback TEXT,
    attempts TEXT
);
CREATE INDEX IF NOT EXISTS calls_by_created ON calls (created_at);
CREATE INDEX IF NOT EXISTS calls_open ON calls (status) WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS calls_open_by_app ON calls (app, function) WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS calls_undelivered ON calls (finished_at) WHERE callback IS NOT NULL
    AND status IN ('succeeded', 'failed', 'cancelled')
    AND NOT json_extract(callback, '$.delivered') AND NOT json_extract(callback, '$.gave_up');
-- A spawned call's arguments and result, apart from the rows the call runner's sweep reads; each
-- app's total (call_storage) follows every insert, update and delete of them.
CREATE TABLE IF NOT EXISTS call_payloads (
    call_id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    arguments BLOB NOT NULL,
    result BLOB
);
CREATE TABLE IF NOT EXISTS call_storage (
    app TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS call_payloads_added AFTER INSERT ON call_payloads BEGIN
    INSERT INTO call_storage (app, bytes) VALUES (new.app, length(new.arguments) + COALESCE(length(new.result), 0))
    ON CONFLICT(app) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS call_payloads_changed AFTER UPDATE OF result ON call_payloads BEGIN
    UPDATE call_storage SET bytes = bytes + COALESCE(length(new.result), 0) - COALESCE(length(old.result), 0)
    WHERE app = new.app;
END;
CREATE TRIGGER IF NOT EXISTS call_payloads_removed AFTER DELETE ON call_payloads BEGIN
    UPDATE call_storage SET bytes = bytes - length(old.arguments) - COALESCE(length(old.result), 0)
    WHERE app = old.app;
END;
CREATE TRIGGER IF NOT EXISTS calls_removed AFTER DELETE ON calls BEGIN
    DELETE FROM call_payloads WHERE call_id = old.call_id;
END;
"""

# Version 1: before app_auth (protection was "has an active token"); 2: protection is the app's own;
# 3: time indexes for retention (created by the schema script).
# 4: the code payload of each function of the versions being deployed and live (a restarted
# control plane redeploys the live versions Serve lost).
# 5: spawned calls (created by the schema script); 6: the runs of each spawned call; 7: each app's
# incarnation (deployed again after a delete: a new webhook secret); 8: spawned calls' arguments
# and results in call_payloads, counted per app (call_storage); 9: secrets; 10: scheduled runs (both
# created by the schema script).
SCHEMA_VERSION = 10


def _protect_apps_that_had_tokens(conn: sqlite3.Connection) -> None:
    """1 -> 2: an app that ever had a token stays protected."""
    conn.execute(
        "INSERT OR IGNORE INTO app_auth (app, protected, changed_at) SELECT DISTINCT app, 1, ? FROM tokens",
        (time.time(),),
    )


def _add_call_attempts(conn: sqlite3.Connection) -> None:
    """5 -> 6: a spawned call lists its runs (NULL for calls from before)."""
    if "attempts" not in {row[1] for row in conn.execute("PRAGMA table_info(calls)")}:
        conn.execute("ALTER TABLE calls ADD COLUMN attempts TEXT")


def _add_app_incarnations(conn: sqlite3.Connection) -> None:
    """6 -> 7: every app is at its first incarnation."""
    if "incarnation" not in {row[1] for row in conn.execute("PRAGMA table_info(apps)")}:
        conn.execute("ALTER TABLE apps ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0")


def _move_call_payloads(conn: sqlite3.Connection) -> None:
    """7 -> 8: arguments and results leave the calls table for call_payloads (counted per app)."""
    conn.execute(
        "INSERT OR IGNORE INTO call_payloads (call_id, app, arguments, result) "
        "SELECT call_id, app, CAST(arguments AS BLOB), CAST(result AS BLOB) FROM calls"
    )
    conn.execute("UPDATE calls SET arguments = '', result = NULL")


MIGRATIONS = {
    2: _protect_apps_that_had_tokens,
    6: _add_call_attempts,
    7: _add_app_incarnations,
    8: _move_call_payloads,
}

# Retention of what the store keeps (applied in small batches by the store actor).
ARRIVAL_RETENTION_S = 7 * 24 * 3600.0  # what the autoscaler learns daily and weekly periods from
SCALE_EVENT_RETENTION_S = 30 * 24 * 3600.0
VERSIONS_KEPT = 20  # per app, besides the live version: its recent history and rollback sources
WEIGHTS_KEPT = 10  # records per model, the current one included
RETENTION_TABLES = ("arrivals", "scale_events", "app_versions", "weights", "calls", "schedule_runs")


class StateDB(CallRows, WeightRows, TokenRows, SecretRows, ScheduleRows):
    """Typed access to the control-plane tables. Not thread-safe: one owner per connection."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # NORMAL: a killed store loses nothing it acknowledged; a power loss can cost the last
        # second of arrivals and scale events (README, "Durability and upgrades").
        self.conn = open_database(
            self.path,
            synchronous="NORMAL",
            schema=SCHEMA + SECRET_SCHEMA + SCHEDULE_SCHEMA,
            version=SCHEMA_VERSION,
            migrations=MIGRATIONS,
            what="control-plane state",
        )

    def close(self) -> None:
        self.conn.close()

    # --- apps and versions -------------------------------------------------------------------
    def begin_version(
        self, app: str, source: str, functions: list[dict[str, Any]], payloads: dict[str, bytes] | None = None
    ) -> int:
        """Record a new version of `app` in state 'deploying' and return its number; functions
        without a Serve application get the version's own (`version_app_name`). `payloads`
        (function name -> pickled code) are kept while the version is deploying or live."""
        now = time.time()
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO apps (name, live_version, created_at) VALUES (?, NULL, ?) "
                # an app deployed again after it was deleted is a new one: a new webhook secret
                "ON CONFLICT(name) DO UPDATE SET incarnation = incarnation + (deleted_at IS NOT NULL), "
                "created_at = CASE WHEN deleted_at IS NOT NULL THEN excluded.created_at ELSE created_at END, "
                "deleted_at = NULL",
                (app, now),
            )
            row = self.conn.execute(
                "SELECT COALESCE(MAX(version), 0) AS v FROM app_versions WHERE app = ?", (app,)
            ).fetchone()
            version = int(row["v"]) + 1
            serve_app = version_app_name(app, version)
            functions = [{**f, "serve_app": f.get("serve_app") or serve_app} for f in functions]
            self.conn.execute(
                "INSERT INTO app_versions (app, version, source, functions, status, created_at) "
                "VALUES (?, ?, ?, ?, 'deploying', ?)",
                (app, version, source, json.dumps(functions), now),
            )
            self.conn.executemany(
                "INSERT INTO version_payloads (app, version, function, payload) VALUES (?, ?, ?, ?)",
                [(app, version, name, payload) for name, payload in (payloads or {}).items()],
            )
        return version

    def version_payloads(self, app: str, version: int) -> dict[str, bytes]:
        """The code payloads kept for a version (function name -> pickled code)."""
        rows = self.conn.execute(
            "SELECT function, payload FROM version_payloads WHERE app = ? AND version = ?", (app, version)
        )
        return {r["function"]: bytes(r["payload"]) for r in rows}

    def _drop_payloads_except(self, app: str, keep: int | None) -> None:
        self.conn.execute(
            "DELETE FROM version_payloads WHERE app = ? AND version != ? AND version NOT IN "
            "(SELECT version FROM app_versions WHERE app = ? AND status = 'deploying')",
            (app, -1 if keep is None else keep, app),
        )

    def mark_live(self, app: str, version: int) -> None:
        now = time.time()
        with transaction(self.conn):
            self.conn.execute("UPDATE app_versions SET status = 'superseded' WHERE app = ? AND status = 'live'", (app,))
            self.conn.execute(
                "UPDATE app_versions SET status = 'live', live_at = ? WHERE app = ? AND version = ?",
                (now, app, version),
            )
            self.conn.execute("UPDATE apps SET live_version = ? WHERE name = ?", (version, app))
            self._drop_payloads_except(app, version)

    def mark_failed(self, app: str, version: int) -> None:
        with transaction(self.conn):
            self.conn.execute("UPDATE app_versions SET status = 'failed' WHERE app = ? AND version = ?", (app, version))
            self.conn.execute("DELETE FROM version_payloads WHERE app = ? AND version = ?", (app, version))
            self.conn.execute(
                "UPDATE apps SET deleted_at = ? WHERE name = ? AND live_version IS NULL", (time.time(), app)
            )

    def delete_app(self, app: str) -> bool:
        with transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE apps SET deleted_at = ?, live_version = NULL WHERE name = ? AND deleted_at IS NULL",
                (time.time(), app),
            )
            self.conn.execute(
                "UPDATE app_versions SET status = 'stopped' WHERE app = ? AND status IN ('live', 'deploying')",
                (app,),
            )
            self.conn.execute("DELETE FROM version_payloads WHERE app = ?", (app,))
            # its tokens go with it: an app deployed later under the name starts with none
            self.conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE app = ? AND revoked_at IS NULL", (time.time(), app)
            )
        return cur.rowcount > 0

    def incarnation(self, app: str) -> int | None:
        """How many times `app` was deployed again after being deleted (None for an unknown app)."""
        row = self.conn.execute("SELECT incarnation FROM apps WHERE name = ?", (app,)).fetchone()
        return None if row is None else int(row["incarnation"])

    def live_apps(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every live app (or the one named) with its live version's functions (the gateway's
        routing table)."""
        query = (
            "SELECT a.name, a.live_version, v.functions, v.live_at, v.source, a.created_at "
            "FROM apps a JOIN app_versions v ON v.app = a.name AND v.version = a.live_version "
            "WHERE a.deleted_at IS NULL"
        )
        if name is None:
            rows = self.conn.execute(query + " ORDER BY a.name").fetchall()
        else:
            rows = self.conn.execute(query + " AND a.name = ?", (name,)).fetchall()
        return [
            {
                "name": r["name"],
                "version": r["live_version"],
                "functions": json.loads(r["functions"]),
                "live_at": r["live_at"],
                "source": r["source"],
                "created_at": r["created_at"],
            }
            for r in rows
        ]

    def known_units(self) -> set[str]:
        """Every "app/function" any recorded version of any app has held."""
        known: set[str] = set()
        for r in self.conn.execute("SELECT app, functions FROM app_versions"):
            for entry in json.loads(r["functions"]):
                name = entry.get("spec", {}).get("name")
                if name:
                    known.add(f"{r['app']}/{name}")
        return known

    def versions(self, app: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT version, status, created_at, live_at, source FROM app_versions WHERE app = ? ORDER BY version",
            (app,),
        ).fetchall()
        return [dict(r) for r in rows]

    # --- arrivals ----------------------------------------------------------------------------
    def record_arrivals(self, arrivals: Iterable[tuple[str, str, float]]) -> int:
        rows = list(arrivals)
        if rows:
            with transaction(self.conn):
                self.conn.executemany("INSERT INTO arrivals (app, function, ts) VALUES (?, ?, ?)", rows)
        return len(rows)

    def arrivals(self, app: str, function: str, since: float = 0.0) -> list[float]:
        rows = self.conn.execute(
            "SELECT ts FROM arrivals WHERE app = ? AND function = ? AND ts >= ? ORDER BY ts",
            (app, function, since),
        ).fetchall()
        return [r["ts"] for r in rows]

    def last_arrivals(self, since: float) -> dict[str, float]:
        """The latest arrival per function since `since`, keyed "app/function"."""
        rows = self.conn.execute(
            "SELECT app, function, MAX(ts) AS last FROM arrivals WHERE ts >= ? GROUP BY app, function", (since,)
        ).fetchall()
        return {f"{r['app']}/{r['function']}": r["last"] for r in rows}

    def arrivals_after(self, cursor: int, limit: int = 100_000) -> tuple[int, dict[str, list[float]]]:
        """Arrivals recorded after row `cursor` (-1: none, only the current cursor), keyed
        "app/function", and the new cursor. Row ids grow with every insert, so an arrival
        recorded late (a slow gateway flush) is still seen once."""
        if cursor < 0:
            row = self.conn.execute("SELECT COALESCE(MAX(rowid), 0) AS last FROM arrivals").fetchone()
            return int(row["last"]), {}
        out: dict[str, list[float]] = {}
        last = cursor
        for r in self.conn.execute(
            "SELECT rowid, app, function, ts FROM arrivals WHERE rowid > ? ORDER BY rowid LIMIT ?", (cursor, limit)
        ):
            out.setdefault(f"{r['app']}/{r['function']}", []).append(r["ts"])
            last = r["rowid"]
        return last, out

    def save_policy_state(self, app: str, function: str, state: dict[str, Any]) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO policy_state (app, function, state, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(app, function) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (app, function, json.dumps(state), time.time()),
            )

    def load_policy_state(self, app: str, function: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT state FROM policy_state WHERE app = ? AND function = ?", (app, function)
        ).fetchone()
        return json.loads(row["state"]) if row else None

    def retention_batch(self, table: str, now: float, limit: int) -> int:
        """Delete at most `limit` rows of `table` past its retention; return how many went.

        arrivals and scale events: older than their retention; app versions: all but an app's
        live version and its latest VERSIONS_KEPT; weights: all but a model's latest WEIGHTS_KEPT;
        spawned calls: created longer ago than the call retention (`raygpu up --call-retention`);
        scheduled runs: older than SCHEDULE_RUN_RETENTION_S."""
        if table == "schedule_runs":
            return self.schedule_retention_batch(now, limit)
        queries = {
            "arrivals": (
                "DELETE FROM arrivals WHERE rowid IN (SELECT rowid FROM arrivals WHERE ts < ? LIMIT ?)",
                (now - ARRIVAL_RETENTION_S, limit),
            ),
            "scale_events": (
                "DELETE FROM scale_events WHERE rowid IN (SELECT rowid FROM scale_events WHERE ts < ? LIMIT ?)",
                (now - SCALE_EVENT_RETENTION_S, limit),
            ),
            "app_versions": (
                "DELETE FROM app_versions WHERE rowid IN (SELECT v.rowid FROM app_versions v JOIN apps a ON a.name = v.app "
                "WHERE v.version != COALESCE(a.live_version, -1) AND v.status != 'deploying' "
                "AND v.version <= (SELECT MAX(version) FROM app_versions WHERE app = v.app) - ? LIMIT ?)",
                (VERSIONS_KEPT, limit),
            ),
            "weights": (
                "DELETE FROM weights WHERE rowid IN (SELECT w.rowid FROM weights w WHERE w.version <= "
                "(SELECT MAX(version) FROM weights WHERE app = w.app AND function = w.function AND model = w.model) - ? "
                "LIMIT ?)",
                (WEIGHTS_KEPT, limit),
            ),
            "calls": (
                "DELETE FROM calls WHERE rowid IN (SELECT rowid FROM calls WHERE created_at < ? LIMIT ?)",
                (now - float(self.get_setting("call_retention_s", DEFAULT_CALL_RETENTION_S)), limit),
            ),
        }
        sql, params = queries[table]
        with transaction(self.conn):
            return self.conn.execute(sql, params).rowcount

    # --- scale events ------------------------------------------------------------------------
    def record_scale_events(self, events: Iterable[tuple[str, str, float, int, int]]) -> None:
        rows = list(events)
        if rows:
            with transaction(self.conn):
                self.conn.executemany(
                    "INSERT INTO scale_events (app, function, ts, from_replicas, to_replicas) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )

    def scale_events(self, app: str, function: str, since: float = 0.0) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT ts, from_replicas, to_replicas FROM scale_events WHERE app = ? AND function = ? AND ts >= ? "
            "ORDER BY ts, rowid",
            (app, function, since),
        ).fetchall()
        return [{"time": r["ts"], "from": r["from_replicas"], "to": r["to_replicas"]} for r in rows]

    def last_scale_event(self, app: str, function: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT ts, from_replicas, to_replicas FROM scale_events WHERE app = ? AND function = ? "
            "ORDER BY ts DESC LIMIT 1",
            (app, function),
        ).fetchone()
        if row is None:
            return None
        return {"time": row["ts"], "from": row["from_replicas"], "to": row["to_replicas"]}

    # --- settings ----------------------------------------------------------------------------
    def set_setting(self, key: str, value: Any) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default
