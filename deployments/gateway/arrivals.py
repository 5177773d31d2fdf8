"""The gateway's buffer of accepted calls not yet shipped to the store: bounded, so a store that is
away costs the autoscaler its oldest arrivals, never the gateway its memory. Pure: no Ray."""

from __future__ import annotations

from collections import deque

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
