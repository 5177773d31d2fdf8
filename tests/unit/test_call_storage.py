"""Spawned calls' bytes: arguments and results kept apart from the rows the runner sweeps, counted per
app against its budget (413 past the whole budget, 507 past what is left), results spliced into the
record's JSON unparsed, the sweep's queries on indexes, and the store's own waits bounded."""

import asyncio
import collections
import hashlib
import json
import sqlite3
import time

import pytest

from deployments.calls.records import CallbackState, CallRecord, new_call_id, record_json
from deployments.store.actor import ControlPlaneStore
from deployments.store.call_methods import MAX_STORE_WAITERS
from deployments.store.db import SCHEMA_VERSION, StateDB

ADMIN = "admin-key"


def new_record(app="a", function="f", created_at=None, callback=None):
    return CallRecord(
        call_id=new_call_id(), app=app, function=function, created_at=created_at or time.time(), callback=callback
    )


def test_each_apps_arguments_and_results_are_counted_as_they_come_and_go(tmp_path):
    db = StateDB(tmp_path / "state.db")
    one, two, other = new_record(), new_record(), new_record(app="b")
    db.create_call(one, None, b"x" * 100)
    db.create_call(two, None, b"y" * 40)
    db.create_call(other, None, b"z" * 7)
    assert db.call_storage("a") == 140 and db.call_storage("b") == 7 and db.call_storage("c") == 0
    db.finish_call(one.call_id, "succeeded", b"r" * 60, None, time.time())
    assert db.call_storage("a") == 200
    db.cancel_call(two.call_id, time.time())  # a cancelled call keeps its arguments until retention
    assert db.call_storage("a") == 200
    assert not db.finish_call(two.call_id, "succeeded", b"late", None, time.time())  # nothing kept for it
    assert db.call_storage("a") == 200
    db.set_setting("call_retention_s", 60)
    db.conn.execute("UPDATE calls SET created_at = ? WHERE app = 'a'", (time.time() - 3600,))
    assert db.retention_batch("calls", time.time(), 100) == 2
    assert db.call_storage("a") == 0 and db.call_storage("b") == 7
    assert db.conn.execute("SELECT COUNT(*) FROM call_payloads WHERE app = 'a'").fetchone()[0] == 0


def test_the_runners_sweep_and_the_queue_bound_read_indexes(tmp_path):
    db = StateDB(tmp_path / "state.db")
    plans = {
        "undelivered": "SELECT call_id FROM calls WHERE callback IS NOT NULL AND status IN "
        "('succeeded', 'failed', 'cancelled') AND NOT json_extract(callback, '$.delivered') "
        "AND NOT json_extract(callback, '$.gave_up') ORDER BY finished_at",
        "open": "SELECT call_id FROM calls WHERE status IN ('pending', 'running') ORDER BY created_at",
    }
    for name, query in plans.items():
        plan = " ".join(str(row[3]) for row in db.conn.execute("EXPLAIN QUERY PLAN " + query))
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (name, plan)
    plan = " ".join(
        str(r[3])
        for r in db.conn.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM calls WHERE status IN ('pending', 'running') AND app = ? "
            "AND (function = ? OR function LIKE ? ESCAPE '\\')",
            ("a", "f", "f.%"),
        )
    )
    assert "calls_open" in plan
    # the sweep's rows hold no payloads
    record = new_record(callback=CallbackState(url="http://x"))
    db.create_call(record, None, b"a" * 1000)
    db.finish_call(record.call_id, "succeeded", b"b" * 1000, None, time.time())
    row = db.conn.execute("SELECT arguments, result FROM calls WHERE call_id = ?", (record.call_id,)).fetchone()
    assert row["arguments"] == "" and row["result"] is None
    assert db.undelivered_callbacks() == [record.call_id]


def test_a_state_db_of_schema_7_moves_its_call_payloads_out_and_counts_them(tmp_path):
    path = tmp_path / "state.db"
    StateDB(path).close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TRIGGER call_payloads_added; DROP TRIGGER call_payloads_changed; DROP TRIGGER call_payloads_removed; "
        "DROP TRIGGER calls_removed; DROP TABLE call_payloads; DROP TABLE call_storage; PRAGMA user_version = 7;"
    )
    conn.execute(
        "INSERT INTO calls (call_id, app, function, status, created_at, arguments, result) "
        "VALUES ('fc-aaaaaaaaaaaaaaaaaaaaaa', 'shop', 'add', 'succeeded', 1767607200, '{\"a\":1}', '42')"
    )
    conn.commit()
    conn.close()
    db = StateDB(path)
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.call_work("fc-aaaaaaaaaaaaaaaaaaaaaa") == (None, b'{"a":1}')
    assert db.call_result("fc-aaaaaaaaaaaaaaaaaaaaaa") == b"42"
    assert db.call_storage("shop") == len(b'{"a":1}') + 2


def test_a_records_json_carries_its_result_as_kept():
    record = new_record().model_dump(mode="json")
    spliced = json.loads(record_json(record, b'{"big": [1, 2, 3]}'))
    assert spliced["result"] == {"big": [1, 2, 3]} and spliced["call_id"] == record["call_id"]
    assert json.loads(record_json(record, None))["result"] is None


def store(tmp_path, budget=None):
    control = ControlPlaneStore(str(tmp_path / "state.db"), hashlib.sha256(ADMIN.encode()).hexdigest())
    if budget is not None:
        control.db.set_setting("call_storage_per_app", budget)
    return control


def test_the_store_refuses_a_spawn_past_the_apps_budget_and_a_result_that_does_not_fit(tmp_path):
    async def scenario():
        control = store(tmp_path, budget=2**20)
        kept = await control.create_call("a", "f", None, b'{"x":"' + b"1" * 600_000 + b'"}')
        assert "record" in kept
        full = await control.create_call("a", "f", None, b'{"x":"' + b"1" * 500_000 + b'"}')
        assert full["refused"]["status"] == 507 and full["refused"]["type"] == "CallStorageFull"
        assert "--call-storage-per-app" in full["refused"]["message"]
        too_big = await control.create_call("a", "f", None, b"1" * (2**20 + 1))
        assert too_big["refused"]["status"] == 413
        assert "record" in await control.create_call("b", "f", None, b"{}")  # another app has its own budget
        call_id = kept["record"]["call_id"]
        assert await control.start_call(call_id)
        assert await control.finish_call(call_id, "succeeded", b"2" * 600_000, None)
        status, body = await control.call_json(call_id, "a")
        record = json.loads(body)
        assert status == "failed" and record["error"]["status"] == 507 and record["result"] is None
        assert await control.call_json(call_id, "b") is None  # another app's call is unknown
        with pytest.raises(ValueError, match="JSON text"):
            await control.finish_call(call_id, "succeeded", {"not": "bytes"}, None)

    asyncio.run(scenario())


def test_finishes_are_reported_to_gateways_and_the_stores_own_waits_are_bounded(tmp_path):
    async def scenario():
        control = store(tmp_path)
        ids = [(await control.create_call("a", "f", None, b"{}"))["record"]["call_id"] for _ in range(3)]
        start, first = await control.finished_calls_after(-1)
        cursor = start
        assert first == []
        poll = asyncio.ensure_future(control.finished_calls_after(cursor, 5.0))
        await asyncio.sleep(0.05)
        assert not poll.done()  # a long poll waits for a finish
        await control.finish_call(ids[0], "succeeded", b"1", None)
        cursor, finished = await asyncio.wait_for(poll, 1.0)
        assert finished == [ids[0]]
        await control.cancel_call(ids[1], "a")
        assert (await control.finished_calls_after(cursor))[1] == [ids[1]]
        control._finished_ids = collections.deque(control._finished_ids, maxlen=1)
        assert (await control.finished_calls_after(start))[1] is None  # behind what is remembered: wake all

        # MAX_STORE_WAITERS callers wait in the store; the next is answered at once
        waiting = [asyncio.ensure_future(control.call_json(ids[2], None, 30.0)) for _ in range(MAX_STORE_WAITERS)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        status, _ = await control.call_json(ids[2], None, 30.0)
        assert status == "pending" and time.monotonic() - started < 1.0
        await control.finish_call(ids[2], "succeeded", b"3", None)
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 2.0)
        assert {status for status, _ in answers} == {"succeeded"}

    asyncio.run(scenario())


def test_storage_sizes_as_the_cli_takes_them():
    from raygpu.cli.quantities import parse_size

    assert parse_size("1GiB", "--call-storage-per-app") == 2**30
    assert parse_size("512 MiB", "--x") == 512 * 2**20 and parse_size("2gb", "--x") == 2 * 10**9
    assert parse_size("1048576", "--x") == 2**20
    for bad in ("lots", "1KiB", "-5GiB", "1e30", "nanGiB"):
        with pytest.raises(ValueError, match="--call-storage-per-app"):
            parse_size(bad, "--call-storage-per-app")
