"""Spawned calls from Python: `fn.spawn(...)` returns a FunctionCall to poll, wait on or cancel,
from this process or another (`FunctionCall.from_id`)."""

from __future__ import annotations

import json
import time
from typing import Any

import ray

from deployments.calls.records import MAX_WAIT_S
from deployments.errors import ERROR_SOURCE_HEADER, call_error
from raygpu.sdk.connection import connect
from raygpu.sdk.control import store
from raygpu.sdk.errors import NotFoundError, RemoteCallError

# How often `get` asks again when the store answers at once (it holds a bounded number of waits).
POLL_INTERVAL_S = 0.5


class FunctionCall:
    """A call spawned with `fn.spawn(...)`; its record lives in the control plane."""

    def __init__(self, call_id: str):
        self.call_id = call_id

    @classmethod
    def from_id(cls, call_id: str, *, address: str | None = None) -> FunctionCall:
        """The spawned call with this id (NotFoundError when there is none, or it is past retention)."""
        connect(address)
        call = cls(call_id)
        call.record()
        return call

    def record(self, wait_s: float = 0.0) -> dict[str, Any]:
        """The call's record (status, times, result or error), waiting up to `wait_s` for it to end."""
        found = ray.get(store().call_json.remote(self.call_id, None, wait_s))
        if found is None:
            raise NotFoundError(f"no spawned call {self.call_id!r} (unknown, or past the call retention)")
        return json.loads(found[1])

    def get(self, timeout: float | None = None) -> Any:
        """The call's result, waiting for it (at most `timeout` seconds: TimeoutError after that).
        A failed call raises its call error (raygpu.RemoteError when its code raised, ...); a
        cancelled one, RemoteCallError "Cancelled"."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = MAX_WAIT_S if deadline is None else max(deadline - time.monotonic(), 0.0)
            waited = time.monotonic()
            record = self.record(wait_s=min(remaining, MAX_WAIT_S))
            status = record["status"]
            if status == "succeeded":
                return record["result"]
            if status == "cancelled":
                raise RemoteCallError(409, "Cancelled", "the call was cancelled")
            if status == "failed":
                error = dict(record.get("error") or {})
                source = error.pop("source", None)
                raise call_error(
                    int(error.pop("status", 500)),
                    {"error": error},
                    {ERROR_SOURCE_HEADER: source} if source else None,
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"spawned call {self.call_id} has not finished within {timeout:g} s (it is {status})"
                )
            if time.monotonic() - waited < POLL_INTERVAL_S:  # the store had no room to wait: poll
                time.sleep(min(POLL_INTERVAL_S, max(remaining, 0.0)))

    def cancel(self) -> bool:
        """Cancel the call if it has not finished; True when it was open. A running sync call's
        replica is replaced (its thread cannot be stopped), as after a timeout."""
        previous, _ = ray.get(store().cancel_call.remote(self.call_id))
        if previous is None:
            raise NotFoundError(f"no spawned call {self.call_id!r} (unknown, or past the call retention)")
        if previous == "running":
            from deployments.calls.runner import get_call_runner

            ray.get(get_call_runner().cancel.remote(self.call_id))
        return previous in ("pending", "running")

    def __repr__(self) -> str:
        return f"<raygpu.FunctionCall {self.call_id}>"
