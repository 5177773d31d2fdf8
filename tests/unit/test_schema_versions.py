"""Schema versions of the SQLite files: a file of the previous schema is migrated when opened, a
file of a newer schema is refused with what to do."""

import sqlite3
import time

import pytest

from billing.ledger import LEDGER_SCHEMA_VERSION, Ledger
from billing.schema_versions import SchemaError
from deployments.store.db import SCHEMA_VERSION, StateDB

# The control-plane schema as raygpu wrote it before versions were kept (no app_auth table).
PREVIOUS_STATE_SCHEMA = """
CREATE TABLE apps (name TEXT PRIMARY KEY, live_version INTEGER, created_at REAL NOT NULL, deleted_at REAL);
CREATE TABLE app_versions (app TEXT NOT NULL, version INTEGER NOT NULL, source TEXT NOT NULL, functions TEXT NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, live_at REAL, PRIMARY KEY (app, version));
CREATE TABLE tokens (id TEXT PRIMARY KEY, app TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL,
    revoked_at REAL);
CREATE TABLE arrivals (app TEXT NOT NULL, function TEXT NOT NULL, ts REAL NOT NULL);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_a_state_db_of_the_previous_schema_is_migrated(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(PREVIOUS_STATE_SCHEMA)
    now = time.time()
    conn.execute("INSERT INTO apps VALUES ('shop', 1, ?, NULL)", (now,))
    conn.execute(
        "INSERT INTO app_versions VALUES ('shop', 1, 'shop.py', '[{\"spec\": {\"name\": \"add\"}}]', 'live', ?, ?)",
        (now, now),
    )
    conn.execute("INSERT INTO tokens VALUES ('t1', 'shop', 'hash', ?, ?)", (now, now))  # its only token, revoked
    conn.commit()
    conn.close()
    db = StateDB(path)
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.protected_apps() == ["shop"]  # revoked before the upgrade: still closed after it
    assert db.live_apps()[0]["name"] == "shop" and db.known_units() == {"shop/add"}
    db.close()
    assert StateDB(path).protected_apps() == ["shop"]  # opening again migrates nothing twice


def test_a_ledger_of_the_previous_schema_gains_its_quarantine(tmp_path):
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE events (id TEXT PRIMARY KEY, app TEXT NOT NULL, function TEXT NOT NULL, replica TEXT NOT NULL, "
        "kind TEXT NOT NULL, ts REAL NOT NULL, gpus REAL NOT NULL, accelerator TEXT)"
    )
    conn.execute("INSERT INTO events VALUES ('e1', 'shop', 'add', 'r1', 'started', 1767607200, 1.0, 'H100')")
    conn.commit()
    conn.close()
    ledger = Ledger(path)
    assert ledger.conn.execute("PRAGMA user_version").fetchone()[0] == LEDGER_SCHEMA_VERSION
    assert [e.id for e in ledger.events()] == ["e1"] and ledger.quarantined() == []


def test_a_file_of_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "state.db"
    StateDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="upgrade raygpu"):
        StateDB(path)


def test_a_ledger_of_schema_4_gains_call_ids_and_keeps_its_requests(tmp_path):
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE requests (id TEXT PRIMARY KEY, app TEXT NOT NULL, function TEXT NOT NULL, replica TEXT NOT NULL, "
        "status INTEGER NOT NULL, latency_s REAL NOT NULL, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL, "
        "ts REAL NOT NULL)"
    )
    conn.execute("INSERT INTO requests VALUES ('q1', 'shop', 'add', 'r1', 200, 0.5, 10, 20, 1767607200)")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    ledger = Ledger(path)
    assert ledger.conn.execute("PRAGMA user_version").fetchone()[0] == LEDGER_SCHEMA_VERSION
    assert [r["id"] for r in ledger.requests()] == ["q1"] and ledger.call_stages("q1") == []
    request = {"app": "shop", "function": "add", "replica": "r2", "status": 500, "latency_s": 0.25}
    request.update(bytes_in=1, bytes_out=2, ts=1767607300.0, call_id="order-1", attempt=1)
    ledger.apply(
        [], [{"id": "q2", **request}, {"id": "q3", **request, "status": 200, "attempt": 2, "ts": 1767607301.0}]
    )
    stages = ledger.call_stages("order-1")
    assert [(s["attempt"], s["status"]) for s in stages] == [(1, 500), (2, 200)]
    assert stages[0]["started_at"] == 1767607300.0 - 0.25 and stages[0]["function"] == "add"


def test_a_state_db_of_schema_5_keeps_its_spawned_calls_and_lists_their_runs(tmp_path):
    path = tmp_path / "state.db"
    db = StateDB(path)
    db.conn.execute("ALTER TABLE calls DROP COLUMN attempts")
    db.conn.execute("PRAGMA user_version = 5")
    db.conn.execute(
        "INSERT INTO calls (call_id, app, function, method, status, created_at, arguments) "
        "VALUES ('fc-aaaaaaaaaaaaaaaaaaaaaa', 'shop', 'add', NULL, 'running', 1767607200, '{}')"
    )
    db.close()
    db = StateDB(path)
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    runs = [{"attempt": 1, "finished_at": 1767607201.0, "status": 500, "error_type": "ValueError"}]
    assert db.finish_call("fc-aaaaaaaaaaaaaaaaaaaaaa", "failed", None, {"type": "ValueError"}, 1767607202.0, runs)
    record = db.call("fc-aaaaaaaaaaaaaaaaaaaaaa")
    assert record.status == "failed" and [a.status for a in record.attempts] == [500]
