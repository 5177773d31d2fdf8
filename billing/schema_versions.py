"""Schema versions (`PRAGMA user_version`) of raygpu's SQLite files, the control-plane state and
the billing ledger, and their migrations, run when a file is opened (at `raygpu up`, by the actor
that owns it). No Ray."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

Migration = Callable[[sqlite3.Connection], None]


class SchemaError(RuntimeError):
    """A database file this raygpu cannot use (written by a newer one)."""


def open_database(
    path: str | Path,
    *,
    synchronous: str,
    schema: str,
    version: int,
    migrations: dict[int, Migration],
    what: str,
) -> sqlite3.Connection:
    """An autocommit WAL connection to `path` (created if missing), migrated to `version`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    migrate(conn, schema, version, migrations, what)
    return conn


def migrate(conn: sqlite3.Connection, schema: str, version: int, migrations: dict[int, Migration], what: str) -> int:
    """Bring the database to `version`: create what is missing (`schema` is idempotent), then run
    each migration above the file's version, in order, in one transaction. A file without a
    version that already has tables is version 1 (written before versions were kept). Returns the
    version the file had."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found == 0:
        has_tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        found = 1 if has_tables else version
    if found > version:
        raise SchemaError(
            f"the {what} database is at schema version {found}, newer than this raygpu's {version}; "
            "upgrade raygpu (or point it at another file)"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(schema):
            conn.execute(statement)
        for step in range(found + 1, version + 1):
            if step in migrations:
                migrations[step](conn)
        conn.execute(f"PRAGMA user_version = {int(version)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def _statements(script: str) -> list[str]:
    """The statements of a schema script (executescript would commit the open transaction)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return [statement for statement in out if statement]


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on an autocommit connection (isolation_level=None, where `with conn`
    alone would commit every statement on its own): all of it, or none of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
