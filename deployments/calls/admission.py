"""Admission at the gateway: a call is taken in flight unless its function already holds as many
calls as its queue bound (`FunctionSpec.queue_bound`); the answer comes before the body is read, so
a full queue costs the caller no upload. Pure: no Ray."""

from __future__ import annotations

Key = tuple[str, str]  # (app, function)


class Admission:
    """Calls in flight per function at one gateway replica."""

    def __init__(self) -> None:
        self.inflight: dict[Key, int] = {}

    def admit(self, key: Key, bound: int) -> bool:
        """Take a call in flight unless `bound` are already; the caller releases it when it ends."""
        if self.inflight.get(key, 0) >= bound:
            return False
        self.inflight[key] = self.inflight.get(key, 0) + 1
        return True

    def release(self, key: Key) -> None:
        count = self.inflight.get(key, 0)
        if count <= 1:
            self.inflight.pop(key, None)
        else:
            self.inflight[key] = count - 1

    def count(self, key: Key) -> int:
        return self.inflight.get(key, 0)

    def total(self) -> int:
        return sum(self.inflight.values())
