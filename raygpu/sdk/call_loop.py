"""The call core of this process (deployments/calls/core.py) and the event loop it runs on: one
daemon thread, started on the first call, so sync callers (a script, `map`'s threads, a sync
function inside a replica) and async ones (`.remote.aio`) share the same handles, admission and
resends."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from deployments import constants
from deployments.calls.arrivals import ArrivalRecorder
from deployments.calls.core import CallCore
from raygpu.sdk.control import store

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_core: CallCore | None = None
_arrivals: ArrivalRecorder | None = None


def _start() -> tuple[asyncio.AbstractEventLoop, CallCore]:
    global _loop, _core, _arrivals
    with _lock:
        if _loop is None or _core is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="raygpu-calls", daemon=True).start()
            # handles are opened on the loop's one thread, so two first calls never race to open one
            _loop, _core = loop, CallCore()
            _arrivals = ArrivalRecorder(
                store(),
                constants.MAX_PENDING_ARRIVALS,
                constants.IMMEDIATE_ARRIVAL_AFTER_IDLE_S,
                constants.ARRIVAL_FLUSH_INTERVAL_S,
            )
            asyncio.run_coroutine_threadsafe(_arrivals.ship_forever(), loop)
        return _loop, _core


def core() -> CallCore:
    return _start()[1]


def record_arrival(app: str, function: str) -> None:
    """Record a call of `app/function` for the autoscaler (batched, shipped from the call loop)."""
    _, core_ = _start()
    assert _arrivals is not None
    _arrivals.record(app, function, core_.admission.count((app, function)))


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on the call loop and wait for its result (from any thread but that loop's)."""
    loop, _ = _start()
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()  # a KeyboardInterrupt while waiting cancels the call too
        raise


async def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Await `coroutine` run on the call loop, from any event loop."""
    loop, _ = _start()
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.cancel()
        raise


async def _cancel_tasks() -> None:
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()


def shutdown() -> None:
    """Stop the routers of the handles the call loop opened, then the loop (before this process
    detaches from the cluster: a router left running past ray.shutdown would start a new local Ray).
    Arrivals still buffered are shipped first."""
    global _loop, _core, _arrivals
    with _lock:
        if _loop is not None and _arrivals is not None:
            try:
                asyncio.run_coroutine_threadsafe(_arrivals.ship(), _loop).result(timeout=2)
            except Exception:
                pass
        if _core is not None:
            for handle in _core.handles.values():
                try:
                    handle.shutdown()
                except Exception:
                    pass
            _core.handles.clear()
        if _loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(_cancel_tasks(), _loop).result(timeout=2)
            except Exception:
                pass
            _loop.call_soon_threadsafe(_loop.stop)
        _loop, _core, _arrivals = None, None, None
