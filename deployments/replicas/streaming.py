"""Running a user generator inside a replica: sync generators on a worker thread with a bounded
hand-off, async ones on the loop; both stop promptly when the caller goes away. No Ray here."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

# Items a sync generator may run ahead of its caller before it waits.
HANDOFF_ITEMS = 8
# How often a sync generator waiting for room checks that its caller is still there.
STOP_CHECK_S = 0.1

_DONE = object()


async def iterate_in_thread(
    generator: Any,
    executor: Executor,
    buffer: int = HANDOFF_ITEMS,
    context: contextvars.Context | None = None,
) -> AsyncIterator[Any]:
    """The items of a sync generator, produced on an `executor` thread. When iteration stops
    early (the caller left, the call timed out), the thread stops after its current item and
    closes the generator, so its `finally` blocks run. `context`: the context variables the
    generator's body runs with (the call it serves)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
    room = threading.Semaphore(buffer)
    stop = threading.Event()

    def hand_over(ok: bool, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (ok, value))
        except RuntimeError:  # the loop is gone: nobody is reading
            stop.set()

    def pump() -> None:
        try:
            for item in generator:
                hand_over(True, item)
                while not room.acquire(timeout=STOP_CHECK_S):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
        except BaseException as exc:  # the user's error, ended with the stream
            hand_over(False, exc)
            return
        finally:
            generator.close()
        hand_over(True, _DONE)

    loop.run_in_executor(executor, pump if context is None else lambda: context.run(pump))
    try:
        while True:
            ok, value = await queue.get()
            room.release()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()


def item_source(
    result: Any, executor: Executor, context: contextvars.Context | None = None
) -> AsyncIterator[Any] | None:
    """What a generator call returned as an async iterator of its items (None when it is not a
    generator)."""
    if inspect.isasyncgen(result):
        return result
    if inspect.isgenerator(result):
        return iterate_in_thread(result, executor, context=context)
    return None


async def close_source(source: AsyncIterator[Any]) -> None:
    """Stop a source early: an async generator runs its `finally` blocks, a thread stops."""
    close: Callable[[], Any] | None = getattr(source, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            pass
