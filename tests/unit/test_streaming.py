"""Running user generators in a replica's loop (no Ray): a sync generator on a worker thread hands
items over as they are produced, runs at most a few ahead, and stops (its `finally` runs) soon
after its reader leaves; errors reach the reader."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from deployments.replicas.streaming import HANDOFF_ITEMS, close_source, item_source, iterate_in_thread


def test_items_arrive_as_they_are_produced():
    def slow():
        for i in range(3):
            time.sleep(0.2)
            yield i

    async def read():
        arrivals = []
        started = time.monotonic()
        async for item in iterate_in_thread(slow(), ThreadPoolExecutor(1)):
            arrivals.append((item, time.monotonic() - started))
        return arrivals

    arrivals = asyncio.run(read())
    assert [item for item, _ in arrivals] == [0, 1, 2]
    assert arrivals[0][1] < 0.45  # the first item came before the last was produced


def test_a_sync_generator_runs_only_a_few_items_ahead_and_stops_when_its_reader_leaves():
    produced: list[int] = []
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                produced.append(i)
                yield i
                i += 1
        finally:
            closed.set()

    async def read_two():
        source = iterate_in_thread(endless(), ThreadPoolExecutor(1))
        got = [await anext(source), await anext(source)]
        await asyncio.sleep(0.3)
        assert len(produced) <= 2 + HANDOFF_ITEMS + 1  # bounded hand-off, not a runaway thread
        await close_source(source)
        return got

    assert asyncio.run(read_two()) == [0, 1]
    assert closed.wait(2), "the generator was not closed after its reader left"


def test_an_error_in_the_generator_reaches_the_reader_after_its_items():
    def failing():
        yield 1
        raise RuntimeError("boom")

    async def read():
        got = []
        with pytest.raises(RuntimeError, match="boom"):
            async for item in iterate_in_thread(failing(), ThreadPoolExecutor(1)):
                got.append(item)
        return got

    assert asyncio.run(read()) == [1]


def test_item_source_accepts_both_kinds_and_refuses_a_plain_value():
    async def agen():
        yield "a"

    def gen():
        yield "b"

    async def read():
        executor = ThreadPoolExecutor(1)
        a = [x async for x in item_source(agen(), executor)]
        b = [x async for x in item_source(gen(), executor)]
        return a, b, item_source(42, executor)

    assert asyncio.run(read()) == (["a"], ["b"], None)
