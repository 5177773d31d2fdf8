"""The control-plane store's long polls, driven in-process: the gateway's routing-table wait, the
autoscaler's arrivals wait and the replicas' weights wait each return at once on a change."""

import asyncio
import hashlib
import time

import pytest

from deployments.store.actor import ControlPlaneStore

ADMIN = "rga_test-admin-credential"
ADMIN_HASH = hashlib.sha256(ADMIN.encode()).hexdigest()

ARRIVAL = time.time()  # recent: the store prunes arrivals older than its retention


def run(coro):
    return asyncio.run(coro)


def test_routing_table_long_poll_returns_when_a_version_goes_live(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        generation = (await store.routing_table())["generation"]
        version = await store.begin_version(ADMIN, "shop", "shop.py@1", [])
        started = time.monotonic()
        waiting = asyncio.create_task(store.routing_table(generation, 10.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await store.mark_live(ADMIN, "shop", version)
        table = await waiting
        return table, time.monotonic() - started, generation

    table, waited, before = run(main())
    assert table["generation"] > before and "shop" in table["apps"] and waited < 5


def test_routing_table_poll_times_out_with_the_same_generation(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        generation = (await store.routing_table())["generation"]
        return generation, await store.routing_table(generation, 0.1)

    generation, table = run(main())
    assert table["generation"] == generation


def test_token_changes_move_the_generation(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        created = await store.create_token(ADMIN, "shop")
        table = await store.routing_table()
        revoked = await store.revoke_token(ADMIN, "shop", created["id"])
        again = await store.revoke_token(ADMIN, "shop", created["id"])
        return created, table, revoked, again

    created, table, revoked, again = run(main())
    assert table["generation"] == created["generation"] and len(table["token_hashes"]["shop"]) == 1
    assert revoked["revoked"] and revoked["generation"] > created["generation"]
    assert not again["revoked"] and again["generation"] == revoked["generation"]


def test_arrivals_long_poll_wakes_on_the_first_new_arrival(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        cursor, seen = await store.arrivals_after(0)
        waiting = asyncio.create_task(store.arrivals_after(cursor, 10.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        started = time.monotonic()
        await store.record_arrivals([("shop", "add", ARRIVAL)])
        new_cursor, new = await waiting
        empty = await store.arrivals_after(new_cursor, 0.1)
        return seen, new_cursor, cursor, new, time.monotonic() - started, empty

    seen, new_cursor, cursor, new, waited, empty = run(main())
    assert seen == {} and new == {"shop/add": [ARRIVAL]} and new_cursor > cursor and waited < 5
    assert empty == (new_cursor, {})


def test_weights_wait_returns_the_pushed_version(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        await store.set_weights(ADMIN, "shop", "ranker", "a", "/w1", "fp1", "deploy")
        current = await store.current_weights("shop", "ranker")
        known = {m: w["version"] for m, w in current.items()}
        waiting = asyncio.create_task(store.current_weights("shop", "ranker", known, 10.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await store.set_weights(ADMIN, "shop", "ranker", "a", "/w2", "fp2", "push")
        return known, await waiting

    known, latest = run(main())
    assert latest["a"]["version"] == known["a"] + 1 and latest["a"]["path"] == "/w2"


def test_protection_outlives_the_last_token_until_switched_off(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        created = await store.create_token(ADMIN, "shop")
        await store.revoke_token(ADMIN, "shop", created["id"])
        after_revoke = await store.routing_table()
        second = await store.create_token(ADMIN, "shop")
        off = await store.set_protected(ADMIN, "shop", False)
        after_off = await store.routing_table()
        return after_revoke, off, after_off, second

    after_revoke, off, after_off, second = run(main())
    assert after_revoke["protected"] == ["shop"] and after_revoke["token_hashes"] == {}
    assert off["revoked"] == 1 and after_off["protected"] == [] and after_off["token_hashes"] == {}


@pytest.mark.parametrize("credential", ["", None, "rga_wrong", ADMIN + " "])
def test_mutations_refuse_a_missing_or_wrong_admin_credential(tmp_path, credential):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        calls = [
            store.begin_version(credential, "shop", "x", []),
            store.mark_live(credential, "shop", 1),
            store.mark_failed(credential, "shop", 1),
            store.delete_app(credential, "shop"),
            store.create_token(credential, "shop"),
            store.revoke_token(credential, "shop", "abc"),
            store.set_protected(credential, "shop", False),
            store.set_weights(credential, "shop", "r", "a", "/w", "fp", "push"),
            store.set_setting(credential, "gateway_url", "http://evil"),
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        return outcomes, await store.routing_table(), await store.get_setting("gateway_url")

    outcomes, table, url = run(main())
    assert all(isinstance(o, PermissionError) and "admin credential" in str(o) for o in outcomes), outcomes
    assert table["apps"] == {} and table["protected"] == [] and url is None


def test_a_store_without_an_admin_hash_refuses_every_mutation(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"))
        return await asyncio.gather(
            store.create_token("", "shop"), store.create_token(ADMIN, "shop"), return_exceptions=True
        )

    assert all(isinstance(o, PermissionError) for o in run(main()))


def test_the_generation_never_repeats_across_store_restarts(tmp_path):
    async def main():
        first = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        await first.create_token(ADMIN, "shop")
        before = (await first.routing_table())["generation"]
        first.db.close()
        again = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)  # the actor restarted
        after = (await again.routing_table())["generation"]
        # a gateway still holding `before` is answered at once with the new table, never made to wait
        started = time.monotonic()
        table = await again.routing_table(before + 5, 5.0)
        return before, after, table, time.monotonic() - started

    before, after, table, waited = run(main())
    assert after > before and table["generation"] == after and waited < 1


def test_retention_deletes_in_batches_that_hold_the_loop_briefly(tmp_path):
    from deployments.store import db as state_db

    now = time.time()

    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        old = now - state_db.ARRIVAL_RETENTION_S - 3600
        store.db.record_arrivals([("shop", "add", old + i * 1e-3) for i in range(200_000)])
        store.db.record_arrivals([("shop", "add", now - 60)] * 10)
        store.db.record_scale_events([("shop", "add", now - state_db.SCALE_EVENT_RETENTION_S - 1, 0, 1)] * 5)
        for i in range(30):
            version = await store.begin_version(ADMIN, "shop", f"shop.py@{i}", [])
            await store.mark_live(ADMIN, "shop", version)
        for i in range(15):
            await store.set_weights(ADMIN, "shop", "ranker", "a", f"/w{i}", f"fp{i}", "push")
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        beat = asyncio.create_task(ticker())
        deleted = await store.apply_retention()
        beat.cancel()
        return store, deleted, ticks

    store, deleted, ticks = run(main())
    assert deleted == {
        "arrivals": 200_000,
        "scale_events": 5,
        "app_versions": 10,
        "weights": 5,
        "calls": 0,
        "schedule_runs": 0,
    }
    assert len(store.db.arrivals("shop", "add")) == 10
    versions = [v["version"] for v in store.db.versions("shop")]
    assert versions == list(range(11, 31)) and store.db.live_apps()[0]["version"] == 30
    assert store.db.current_weights("shop", "ranker")["a"]["path"] == "/w14"
    # in batches, yielding between them: other calls ran meanwhile, and no batch held the loop long
    assert ticks > 1 and store.longest_retention_batch_s < 0.25
