"""Spawned calls without a cluster: records through their states in a real SQLite store, retention,
`?wait=`, callback URLs (resolved by an injected resolver), signatures, and the spawn route."""

import time

import pytest

from deployments.calls.callbacks import (
    CallbackRefused,
    check_callback_url,
    parse_networks,
    sign,
    verify,
    webhook_secret,
)
from deployments.calls.records import MAX_WAIT_S, CallbackState, CallRecord, is_call_id, new_call_id, parse_wait
from deployments.store.db import StateDB
from raygpu.cli.quantities import parse_duration


def resolver(table):
    return lambda host, port: table[host]


def test_call_ids_are_random_and_recognised():
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_call_id(i) for i in ids)
    assert not is_call_id("fc-short") and not is_call_id("../../etc") and not is_call_id("fc-" + "a" * 22 + "/")


def test_a_call_moves_through_its_states_in_the_store(tmp_path):
    db = StateDB(tmp_path / "state.db")
    record = CallRecord(call_id=new_call_id(), app="a", function="f", created_at=time.time())
    db.create_call(record, None, b'{"x": 1}')
    assert db.open_calls() == [record.call_id]
    assert db.call_work(record.call_id) == (None, b'{"x": 1}')
    assert db.start_call(record.call_id, time.time())
    assert not db.start_call(record.call_id, time.time())  # only a pending call starts
    assert db.finish_call(record.call_id, "succeeded", b'{"y":2}', None, time.time())
    done = db.call(record.call_id)
    assert done.status == "succeeded" and db.call_result(record.call_id) == b'{"y":2}' and done.finished
    assert db.cancel_call(record.call_id, time.time()) == "succeeded"  # a finished call stays as it was
    assert db.call(record.call_id).status == "succeeded"
    assert db.open_calls() == []

    other = CallRecord(call_id=new_call_id(), app="a", function="f", created_at=time.time())
    db.create_call(other, None, b"{}")
    assert db.cancel_call(other.call_id, time.time()) == "pending"
    cancelled = db.call(other.call_id)
    assert cancelled.status == "cancelled" and cancelled.error["type"] == "Cancelled"
    assert not db.start_call(other.call_id, time.time())  # the runner finds it cancelled
    assert not db.finish_call(other.call_id, "succeeded", b"1", None, time.time())
    assert db.call_result(other.call_id) is None
    assert db.cancel_call(new_call_id(), time.time()) is None


def test_undelivered_webhooks_are_found_until_delivered_or_given_up(tmp_path):
    db = StateDB(tmp_path / "state.db")
    record = CallRecord(
        call_id=new_call_id(), app="a", function="f", created_at=time.time(), callback=CallbackState(url="http://x")
    )
    db.create_call(record, None, b"{}")
    assert db.undelivered_callbacks() == []  # not finished yet
    db.finish_call(record.call_id, "failed", None, {"type": "E", "message": "m"}, time.time())
    assert db.undelivered_callbacks() == [record.call_id]
    db.set_callback(record.call_id, CallbackState(url="http://x", delivered=True).model_dump_json())
    assert db.undelivered_callbacks() == []


def test_call_records_go_after_the_call_retention(tmp_path):
    db = StateDB(tmp_path / "state.db")
    now = time.time()
    old = CallRecord(call_id=new_call_id(), app="a", function="f", created_at=now - 7200)
    new = CallRecord(call_id=new_call_id(), app="a", function="f", created_at=now - 60)
    db.create_call(old, None, b"{}")
    db.create_call(new, None, b"{}")
    db.set_setting("call_retention_s", 3600)
    assert db.retention_batch("calls", now, 100) == 1
    assert db.call(old.call_id) is None and db.call(new.call_id) is not None


def test_wait_is_bounded_and_checked():
    assert parse_wait(None) == 0 and parse_wait("2.5") == 2.5 and parse_wait("9999") == MAX_WAIT_S
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(ValueError, match="wait must be"):
            parse_wait(bad)


def test_callback_urls_to_internal_addresses_are_refused_unless_allowed():
    dns = resolver(
        {
            "hooks.example.com": ["93.184.216.34"],
            "internal.example.com": ["10.0.0.7"],
            "mixed.example.com": ["93.184.216.34", "192.168.1.1"],
            "localhost": ["127.0.0.1"],
            "metadata": ["169.254.169.254"],
            "v6local": ["::1"],
            "mapped": ["::ffff:10.0.0.1"],
        }
    )
    assert check_callback_url("https://hooks.example.com/x", resolve=dns)[1] == ["93.184.216.34"]
    for host in ("internal.example.com", "mixed.example.com", "localhost", "metadata", "v6local", "mapped"):
        with pytest.raises(CallbackRefused, match="--callback-allow"):
            check_callback_url(f"http://{host}/hook", resolve=dns)
    assert check_callback_url("http://internal.example.com/h", ["10.0.0.0/8"], resolve=dns)
    assert check_callback_url("http://localhost:9000/h", ["127.0.0.1/32"], resolve=dns)
    with pytest.raises(CallbackRefused):
        check_callback_url("http://mixed.example.com/h", ["10.0.0.0/8"], resolve=dns)  # every address must pass
    for bad in ("ftp://hooks.example.com/x", "http:///nohost", "hooks.example.com/x", "http://u:p@hooks.example.com/"):
        with pytest.raises(CallbackRefused):
            check_callback_url(bad, resolve=dns)
    with pytest.raises(CallbackRefused, match="does not resolve"):
        check_callback_url("http://nowhere.invalid/", resolve=lambda h, p: (_ for _ in ()).throw(OSError("NXDOMAIN")))
    with pytest.raises(ValueError, match="not a network"):
        parse_networks(["10.0.0.0/33"])


def test_signatures_verify_only_the_exact_body_under_the_apps_secret():
    key = "k" * 64
    secret = webhook_secret(key, "app")
    assert secret != webhook_secret(key, "other") and secret.startswith("whsec_")
    body = b'{"call_id":"fc-x","status":"succeeded"}'
    signature = sign(secret, body)
    assert signature.startswith("sha256=") and verify(secret, body, signature)
    assert not verify(secret, body + b" ", signature)
    assert not verify(webhook_secret(key, "other"), body, signature)


def test_call_retention_durations():
    assert parse_duration("7d") == 7 * 86400 and parse_duration("90m") == 5400 and parse_duration("3600") == 3600
    for bad in ("soon", "10", "-1d", "nanh"):
        with pytest.raises(ValueError, match="--call-retention"):
            parse_duration(bad)


def test_open_calls_are_counted_per_function_and_per_class(tmp_path):
    db = StateDB(tmp_path / "state.db")
    for function in ("f", "f", "Cls.a", "Cls.b", "f_x", "fx.y"):
        db.create_call(
            CallRecord(call_id=new_call_id(), app="a", function=function, created_at=time.time()), None, b"{}"
        )
    assert db.open_call_count("a", "f") == 2
    assert db.open_call_count("a", "Cls") == 2
    assert db.open_call_count("a", "f_x") == 1 and db.open_call_count("b", "f") == 0
