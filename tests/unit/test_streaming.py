"""Running user generators in a replica's loop (no Ray): a sync generator on a worker thread hands
items over as they are produced, runs at most a few ahead, and stops (its `finally` runs) soon
after its reader leaves; errors reach the reader."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from deployments.replicas.streaming import HANDOFF_ITEMS, close_source, item_source, iterate_in_thread


def test_items_arrive_as_they_are_produced():
    reader_has_first = threading.Event()

    def gated():
        yield 0
        # item 1 is produced only once the reader holds item 0: a source that waited for the whole
        # generator before handing anything over would never get here
        assert reader_has_first.wait(5), "the first item did not reach the reader before the next was made"
        yield 1
        yield 2

    async def read():
        items = []
        async for item in iterate_in_thread(gated(), ThreadPoolExecutor(1)):
            items.append(item)
            reader_has_first.set()
        return items

    assert asyncio.run(read()) == [0, 1, 2]


def test_a_sync_generator_runs_only_a_few_items_ahead_and_stops_when_its_reader_leaves():
    produced: list[int] = []
    closed = threading.Event()
    bound = 2 + HANDOFF_ITEMS + 1  # two read, a full hand-off, one made and waiting for room

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
        for _ in range(500):  # wait (at most ~5 s) until the producer has made all it may
            if len(produced) >= bound:
                break
            await asyncio.sleep(0.01)
        await close_source(source)
        return got

    assert asyncio.run(read_two()) == [0, 1]
    assert closed.wait(2), "the generator was not closed after its reader left"
    assert len(produced) == bound, produced  # it reached the bound, and never ran past it


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
