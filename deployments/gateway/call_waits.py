"""Callers of `GET /{app}/calls/{id}?wait=S` wait in the gateway, not in the store: each gateway
replica follows the store's finished calls with one long poll and wakes its waiters. Waiters are
bounded per replica and per app (beyond, 503 with Retry-After), and the store calls user traffic
makes from one replica are bounded too, so callers cannot fill the store actor's slots that the
routing table, arrivals, admin checks and spawns need."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

logger = logging.getLogger("ray.serve.deployments.gateway")

# `?wait=` callers one gateway replica holds at once, and of those, the most for one app.
MAX_WAITERS_PER_REPLICA = 4000
MAX_WAITERS_PER_APP = 1000
# Store calls caused by callers (records, spawns, cancels) in flight at once from one replica.
MAX_CALLER_STORE_CALLS = 64
# How long one long poll of the store's finished calls lasts before it is asked again.
FOLLOW_POLL_S = 30.0


class TooManyWaiters(Exception):
    """This replica already holds as many waiting callers as it takes (for the app, or in all)."""


class CallWaiters:
    """The waiting callers of one gateway replica, keyed by call id."""

    def __init__(self, max_waiters: int = MAX_WAITERS_PER_REPLICA, max_per_app: int = MAX_WAITERS_PER_APP):
        self.max_waiters = max_waiters
        self.max_per_app = max_per_app
        self.total = 0
        self.per_app: collections.Counter[str] = collections.Counter()
        self._events: dict[str, asyncio.Event] = {}
        self._per_call: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def waiting(self, app: str, call_id: str) -> Iterator[asyncio.Event]:
        """Register a waiter (TooManyWaiters past a bound); the event is set when the call finishes.
        Register before reading the record: a finish after the read is then never missed."""
        if self.total >= self.max_waiters:
            raise TooManyWaiters(f"this gateway replica holds {self.total} waiting callers, all it takes")
        if self.per_app[app] >= self.max_per_app:
            raise TooManyWaiters(f"app {app!r} has {self.per_app[app]} callers waiting here, all one app may hold")
        event = self._events.setdefault(call_id, asyncio.Event())
        self.total += 1
        self.per_app[app] += 1
        self._per_call[call_id] += 1
        try:
            yield event
        finally:
            self.total -= 1
            self.per_app[app] -= 1
            if self.per_app[app] <= 0:
                del self.per_app[app]
            self._per_call[call_id] -= 1
            if self._per_call[call_id] <= 0:
                del self._per_call[call_id]
                if self._events.get(call_id) is event:
                    del self._events[call_id]

    def wake(self, call_ids: list[str] | None) -> None:
        """Wake the waiters of these calls (of every call for None: the poll fell behind)."""
        for call_id in list(self._events) if call_ids is None else call_ids:
            event = self._events.pop(call_id, None)
            if event is not None:
                event.set()

    async def follow(self, finished_after: Callable[[int, float], Awaitable[tuple[int, list[str] | None]]]) -> None:
        """Wake waiters as the store reports finished calls, forever (one long poll at a time)."""
        cursor = -1
        while True:
            try:
                last, finished = await finished_after(cursor, 0.0 if cursor < 0 else FOLLOW_POLL_S)
                if cursor >= 0 or finished is None:
                    self.wake(finished)
                cursor = last
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("raygpu gateway: following finished calls failed (%s); retrying", exc)
                self.wake(None)  # a waiter reads its record again rather than sleep through a finish
                cursor = -1
                await asyncio.sleep(1.0)


class CallerStoreCalls:
    """Bounds the store calls that callers' requests make from one replica, and shares one read
    among concurrent requests for the same record."""

    def __init__(self, limit: int = MAX_CALLER_STORE_CALLS):
        self._slots = asyncio.Semaphore(limit)
        self._reads: dict[Any, asyncio.Future[Any]] = {}

    async def run(self, call: Callable[[], Awaitable[Any]]) -> Any:
        async with self._slots:
            return await call()

    async def shared(self, key: Any, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()`'s answer, shared with every request for `key` made while it is in flight."""
        future = self._reads.get(key)
        if future is None:
            future = asyncio.ensure_future(self.run(call))
            self._reads[key] = future
            future.add_done_callback(lambda _: self._reads.pop(key, None))
        return await asyncio.shield(future)
