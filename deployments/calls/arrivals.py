"""Arrival records for the autoscaler (the gateway's, and those of each process calling through its
call loop): each accepted call, the first after a quiet spell at once (it may be a call at zero
replicas), the rest in batches from a bounded buffer, so a store that is away costs the autoscaler
its oldest arrivals, never the caller its memory. The store handle comes in as a parameter. Pure:
no Ray."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

logger = logging.getLogger("ray.serve.deployments.gateway")

Arrival = tuple[str, str, float]


class ArrivalBuffer:
    """Arrivals waiting to be shipped, oldest first; beyond `capacity` the oldest are dropped and counted."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("an arrival buffer holds at least one arrival")
        self.capacity = capacity
        self._items: deque[Arrival] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, arrival: Arrival) -> None:
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(arrival)

    def take(self) -> list[Arrival]:
        """Everything buffered, emptying the buffer."""
        batch = list(self._items)
        self._items.clear()
        return batch

    def put_back(self, batch: list[Arrival]) -> None:
        """Return a batch that could not be shipped ahead of what arrived since, within capacity."""
        merged = batch + list(self._items)
        overflow = max(0, len(merged) - self.capacity)
        self.dropped += overflow
        self._items = deque(merged[overflow:])


class ArrivalRecorder:
    """Records accepted calls in the store (`store.record_arrivals.remote(batch)`)."""

    def __init__(self, store: Any, capacity: int, immediate_after_idle_s: float, flush_interval_s: float):
        self.store = store
        self.pending = ArrivalBuffer(capacity)
        self.immediate_after_idle_s = immediate_after_idle_s
        self.flush_interval_s = flush_interval_s
        self.last_arrival: dict[tuple[str, str], float] = {}
        self._dropped_logged = 0

    def record(self, app: str, function: str, inflight: int) -> None:
        """Record an accepted call. The first call in flight after a quiet spell may be a call at
        zero replicas: it goes to the store at once, which wakes the autoscaler's open long poll,
        instead of waiting for the next batch and the next metrics push. Calls to a function called
        within the spell are batched: it cannot be at zero."""
        now = time.time()
        arrival = (app, function, now)
        key = (app, function)
        previous = self.last_arrival.get(key, 0.0)
        self.last_arrival[key] = now
        if inflight <= 1 and now - previous > self.immediate_after_idle_s:
            try:
                self.store.record_arrivals.remote([arrival])
                return
            except Exception:
                pass
        self.pending.add(arrival)

    async def ship_forever(self) -> None:
        """Ship the buffered arrivals every flush interval; a batch the store refuses goes back."""
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.ship()

    async def ship(self) -> None:
        if self.pending.dropped > self._dropped_logged:
            logger.warning(
                "raygpu: dropped %d arrival record(s) (%d in all) while the store was away; "
                "the autoscaler's history misses them",
                self.pending.dropped - self._dropped_logged,
                self.pending.dropped,
            )
            self._dropped_logged = self.pending.dropped
        if not len(self.pending):
            return
        batch = self.pending.take()
        try:
            await self.store.record_arrivals.remote(batch)
        except Exception as exc:
            logger.warning("raygpu: could not record %d arrivals (%s); will retry", len(batch), exc)
            self.pending.put_back(batch)
