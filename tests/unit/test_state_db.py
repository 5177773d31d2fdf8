"""The control-plane SQLite database (real SQLite, WAL)."""

import sqlite3

from deployments.store.db import ARRIVAL_RETENTION_S, StateDB
from deployments.store.token_rows import hash_token


def test_versions_and_live_apps(tmp_path):
    db = StateDB(tmp_path / "state.db")
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    v1 = db.begin_version("app", "a.py@1", [{"spec": {"name": "f"}}])
    assert db.live_apps() == []  # not live until marked
    db.mark_live("app", v1)
    v2 = db.begin_version("app", "a.py@2", [{"spec": {"name": "g"}}])
    assert (v1, v2) == (1, 2)
    assert db.live_apps()[0]["version"] == 1  # v1 serves while v2 deploys
    db.mark_live("app", v2)
    live = db.live_apps()
    # each version runs as its own Serve application
    assert live[0]["version"] == 2 and live[0]["functions"] == [
        {"spec": {"name": "g"}, "serve_app": "raygpu-app-app--v2"}
    ]
    assert db.known_units() == {"app/f", "app/g"}
    assert db.live_apps("app") == live and db.live_apps("other") == []  # one app's entry alone
    assert [v["status"] for v in db.versions("app")] == ["superseded", "live"]
    v3 = db.begin_version("app", "a.py@3", [])
    db.mark_failed("app", v3)
    assert db.live_apps()[0]["version"] == 2  # a failed deploy leaves the live version
    assert db.delete_app("app") and db.live_apps() == []
    assert db.begin_version("app", "a.py@4", []) == 4  # versions keep counting after a delete


def test_tokens_store_only_hashes(tmp_path):
    path = tmp_path / "state.db"
    db = StateDB(path)
    token_id, token = db.create_token("app")
    assert db.active_token_hashes() == {"app": [hash_token(token)]}
    raw = sqlite3.connect(path).execute("SELECT * FROM tokens").fetchall()
    assert token not in repr(raw)
    assert not db.revoke_token("other", token_id)
    assert db.revoke_token("app", token_id)
    assert db.active_token_hashes() == {}


def test_arrivals_and_scale_events(tmp_path):
    db = StateDB(tmp_path / "state.db")
    db.record_arrivals([("a", "f", 10.0), ("a", "f", 12.0), ("a", "g", 11.0)])
    assert db.arrivals("a", "f") == [10.0, 12.0]
    assert db.last_arrivals(0) == {"a/f": 12.0, "a/g": 11.0}
    now = 11.5 + ARRIVAL_RETENTION_S  # arrivals before 11.5 are past retention
    assert db.retention_batch("arrivals", now, 1) == 1 and db.retention_batch("arrivals", now, 10) == 1
    assert db.retention_batch("arrivals", now, 10) == 0
    assert db.arrivals("a", "f") == [12.0] and db.arrivals("a", "g") == []
    assert db.last_scale_event("a", "f") is None
    db.record_scale_events([("a", "f", 1.0, 0, 1), ("a", "f", 2.0, 1, 0)])
    assert db.last_scale_event("a", "f") == {"time": 2.0, "from": 1, "to": 0}
    db.set_setting("gateway_url", "http://x")
    assert StateDB(tmp_path / "state.db").get_setting("gateway_url") == "http://x"


def test_a_redeploy_keeps_pushed_weights_unless_it_names_new_ones(tmp_path):
    db = StateDB(tmp_path / "state.db")
    assert db.set_weights("shop", "ranker", "a", "/w1", "fp1", "deploy", only_if_changed=True) == 1
    assert db.set_weights("shop", "ranker", "a", "/pushed", "fp2", "push") == 2
    assert db.set_weights("shop", "ranker", "a", "/w1", "fp1", "deploy", only_if_changed=True) == 2  # same file
    assert db.current_weights("shop", "ranker")["a"]["path"] == "/pushed"
    assert db.set_weights("shop", "ranker", "a", "/w3", "fp3", "deploy", only_if_changed=True) == 3  # a new file
    assert db.current_weights("shop", "ranker")["a"]["path"] == "/w3"


def test_a_deleted_app_loses_its_tokens_and_comes_back_as_a_new_app_with_a_new_webhook_secret(tmp_path):
    from deployments.calls.callbacks import webhook_secret

    db = StateDB(tmp_path / "state.db")
    db.mark_live("shop", db.begin_version("shop", "s.py@1", [{"spec": {"name": "f"}}]))
    token_id, token = db.create_token("shop")
    assert len(token_id) == 16  # 64 bits: ids of one cluster do not collide
    assert db.incarnation("shop") == 0 and db.incarnation("nothing") is None
    before = webhook_secret("key", "shop", db.incarnation("shop"))
    assert before == webhook_secret("key", "shop")  # the first incarnation keeps the secret it always had
    db.mark_live("shop", db.begin_version("shop", "s.py@2", [{"spec": {"name": "f"}}]))
    assert db.incarnation("shop") == 0  # a redeploy is the same app
    assert db.delete_app("shop")
    assert db.active_token_hashes().get("shop", []) == []
    db.mark_live("shop", db.begin_version("shop", "s.py@3", [{"spec": {"name": "f"}}]))
    assert db.incarnation("shop") == 1 and webhook_secret("key", "shop", 1) != before
    assert db.active_token_hashes().get("shop", []) == []  # the old token does not come back
