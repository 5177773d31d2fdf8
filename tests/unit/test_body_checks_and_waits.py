"""What keeps a gateway replica's event loop free and its store calls bounded, without a cluster:
pathological bodies refused by a count before any parse, large bodies checked in real worker
processes while the loop keeps ticking, waiting callers bounded and woken by the store's finishes,
and the cancel-replacement decisions of sync functions."""

import asyncio
import json
import time

import pytest

from deployments.calls.cancels import CancelReplacements
from deployments.calls.json_arguments import JsonArguments, decoded
from deployments.gateway.body import (
    INLINE_PARSE_BYTES,
    MAX_JSON_CONTAINERS,
    MAX_JSON_VALUES,
    BodyError,
    check_shape,
)
from deployments.gateway.body_checks import BodyCheckPool
from deployments.gateway.call_waits import CallerStoreCalls, CallWaiters, TooManyWaiters

NESTED_LISTS_16_MIB = b"[" + b"[]," * (16 * 2**20 // 3 - 1) + b"[]]"


def test_a_pathological_body_is_refused_by_a_count_before_it_is_parsed():
    started = time.perf_counter()
    with pytest.raises(BodyError) as refused:
        check_shape(b'{"x": ' + NESTED_LISTS_16_MIB + b"}")
    assert time.perf_counter() - started < 0.5
    assert refused.value.error_type == "BodyTooComplex" and str(MAX_JSON_CONTAINERS) in refused.value.message
    with pytest.raises(BodyError, match=str(MAX_JSON_VALUES)):
        check_shape(b'{"x": [' + b"1," * MAX_JSON_VALUES + b"1]}")
    check_shape(b'{"x": [' + b"1," * 100_000 + b"1]}")  # a plain large array passes
    check_shape(json.dumps({"text": "[[[[,,,," * 10}).encode())


def test_json_arguments_travel_as_text_and_decode_where_they_run():
    import pickle

    arguments = JsonArguments(b'{"a": [1, 2]}')
    assert pickle.loads(pickle.dumps(arguments)).raw == arguments.raw
    assert decoded(arguments) == {"a": [1, 2]} and decoded({"a": 1}) == {"a": 1}
    assert JsonArguments(b" ").decode() == {}


def test_large_bodies_are_checked_in_workers_while_the_loop_keeps_ticking():
    async def scenario():
        pool = BodyCheckPool(size=2)
        try:
            small = await pool.arguments(b'{"x": 1}')
            assert small == {"x": 1}  # parsed inline
            floats = b'{"x": [' + b"0.125," * 300_000 + b"1]}"
            assert len(floats) > INLINE_PARSE_BYTES
            ticks = 0
            stop = False

            async def tick():
                nonlocal ticks
                while not stop:
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.ensure_future(tick())
            started = time.perf_counter()
            checked = await asyncio.gather(*(pool.arguments(floats) for _ in range(4)))
            took = time.perf_counter() - started
            stop = True
            await ticker
            assert all(isinstance(a, JsonArguments) and a.raw == floats for a in checked)
            assert ticks >= took / 0.01 * 0.5, f"the loop ticked {ticks} times in {took:.2f} s"
            for bad, error_type in (
                (b'{"x": ' + b"[" * 70 + b"]" * 70 + b"}" + b" " * INLINE_PARSE_BYTES, "NestingTooDeep"),
                (b'{"x": [1, 2' + b" " * INLINE_PARSE_BYTES, "MalformedJSON"),
                (b"[1]" + b" " * INLINE_PARSE_BYTES, "WrongBodyType"),
                (b'{"x": NaN}' + b" " * INLINE_PARSE_BYTES, "MalformedJSON"),
            ):
                with pytest.raises(BodyError) as refused:
                    await pool.arguments(bad)
                assert refused.value.error_type == error_type
            # a worker past its time is killed and replaced; the next body is checked as before
            pool.timeout_s = 0.001
            with pytest.raises(BodyError, match="could not be parsed"):
                await pool.arguments(floats)
            pool.timeout_s = 10.0
            assert isinstance(await pool.arguments(floats), JsonArguments)
            assert pool._running <= pool.size
        finally:
            await pool.aclose()

    asyncio.run(scenario())


def test_waiting_callers_are_bounded_and_woken_by_the_stores_finishes():
    async def scenario():
        waiters = CallWaiters(max_waiters=3, max_per_app=2)
        finished: asyncio.Queue = asyncio.Queue()

        async def finished_after(cursor, wait_s):
            if cursor < 0:
                return 0, []
            return await finished.get()

        follower = asyncio.ensure_future(waiters.follow(finished_after))
        with waiters.waiting("a", "fc-1") as one, waiters.waiting("a", "fc-1") as same:
            assert one is same
            with pytest.raises(TooManyWaiters, match="app 'a'"):
                with waiters.waiting("a", "fc-2"):
                    pass
            with waiters.waiting("b", "fc-3") as other:
                with pytest.raises(TooManyWaiters, match="all it takes"):
                    with waiters.waiting("c", "fc-4"):
                        pass
                await finished.put((1, ["fc-1"]))
                await asyncio.wait_for(one.wait(), 1.0)
                assert not other.is_set()
                await finished.put((2, None))  # the poll fell behind: every waiter wakes
                await asyncio.wait_for(other.wait(), 1.0)
        assert waiters.total == 0 and not waiters.per_app
        follower.cancel()

        calls = 0

        async def read():
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            return calls

        shared = CallerStoreCalls(limit=2)
        answers = await asyncio.gather(*(shared.shared("k", read) for _ in range(50)))
        assert set(answers) == {1} and calls == 1  # one read for fifty callers

    asyncio.run(scenario())


def test_cancelled_sync_calls_replace_replicas_only_past_the_grace_and_within_the_hourly_limit():
    decisions = CancelReplacements(grace_s=30.0, per_hour=2)
    now = 1_000_000.0
    assert [decisions.decide("a/f", 5.0, now + i) for i in range(20)] == ["finish"] * 20
    assert decisions.decide("a/f", 31.0, now) == "replace"
    assert decisions.decide("a/f", 31.0, now + 1) == "replace"
    assert decisions.decide("a/f", 31.0, now + 2) == "finish"  # the limit for this hour
    assert decisions.decide("a/g", 31.0, now + 2) == "replace"  # per function
    assert decisions.decide("a/f", 31.0, now + 3601) == "replace"  # an hour later
    summary = decisions.summary("a/f", now + 3601)
    assert summary["replaced_last_hour"] == 1 and summary["replaced"] == 3
    assert summary["finished_after_cancel"] == 21 and summary["refused_by_limit"] == 1
    assert decisions.decide("a/h", float("nan"), now) == "finish"
