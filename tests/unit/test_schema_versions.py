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
