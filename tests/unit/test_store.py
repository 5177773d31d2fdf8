"""The control-plane store's long polls, driven in-process: the gateway's routing-table wait, the
autoscaler's arrivals wait and the replicas' weights wait each return at once on a change."""

import asyncio
import time

from deployments.store.actor import ControlPlaneStore

ARRIVAL = time.time()  # recent: the store prunes arrivals older than its retention


def run(coro):
    return asyncio.run(coro)


def test_routing_table_long_poll_returns_when_a_version_goes_live(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"))
        generation = (await store.routing_table())["generation"]
        version = await store.begin_version("shop", "shop.py@1", [])
        started = time.monotonic()
        waiting = asyncio.create_task(store.routing_table(generation, 10.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await store.mark_live("shop", version)
        table = await waiting
        return table, time.monotonic() - started, generation

    table, waited, before = run(main())
    assert table["generation"] > before and "shop" in table["apps"] and waited < 5


def test_routing_table_poll_times_out_with_the_same_generation(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"))
        generation = (await store.routing_table())["generation"]
        return generation, await store.routing_table(generation, 0.1)

    generation, table = run(main())
    assert table["generation"] == generation


def test_token_changes_move_the_generation(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"))
        created = await store.create_token("shop")
        table = await store.routing_table()
        revoked = await store.revoke_token("shop", created["id"])
        again = await store.revoke_token("shop", created["id"])
        return created, table, revoked, again

    created, table, revoked, again = run(main())
    assert table["generation"] == created["generation"] and len(table["token_hashes"]["shop"]) == 1
    assert revoked["revoked"] and revoked["generation"] > created["generation"]
    assert not again["revoked"] and again["generation"] == revoked["generation"]


def test_arrivals_long_poll_wakes_on_the_first_new_arrival(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"))
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
        store = ControlPlaneStore(str(tmp_path / "state.db"))
        await store.set_weights("shop", "ranker", "a", "/w1", "fp1", "deploy")
        current = await store.current_weights("shop", "ranker")
        known = {m: w["version"] for m, w in current.items()}
        waiting = asyncio.create_task(store.current_weights("shop", "ranker", known, 10.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await store.set_weights("shop", "ranker", "a", "/w2", "fp2", "push")
        return known, await waiting

    known, latest = run(main())
    assert latest["a"]["version"] == known["a"] + 1 and latest["a"]["path"] == "/w2"
