"""The store actor's spawned-call methods (a part of deployments.store.actor.ControlPlaneStore):
records created within each app's byte budget, read as JSON with their results spliced in, waited on
(a bounded number of Python callers here; gateways follow `finished_calls_after` for theirs),
finished, cancelled, and the cancel-replacement decisions of sync functions."""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from collections.abc import Callable
from typing import Any

from deployments.calls.cancels import (
    DEFAULT_CANCEL_GRACE_S,
    DEFAULT_CANCEL_REPLACEMENTS_PER_HOUR,
    CancelReplacements,
)
from deployments.calls.records import (
    DEFAULT_CALL_STORAGE_PER_APP,
    FINISHED,
    MAX_WAIT_S,
    CallAttempt,
    CallbackAttempt,
    CallbackState,
    CallRecord,
    callable_label,
    is_call_id,
    new_call_id,
    record_json,
    storage_refusal,
)
from deployments.store.db import StateDB

# Python callers (`FunctionCall.get`) waiting in the store at once; more get the record at once and
# poll again. Gateways hold one long poll each (`finished_calls_after`) for all of their waiters.
MAX_STORE_WAITERS = 64
# Finished call ids the store remembers for gateways' long polls; a gateway further behind wakes all.
FINISHES_REMEMBERED = 10_000


class SpawnedCallMethods:
    """Spawned calls over the store's StateDB (`self.db`), in the store actor's loop."""

    db: StateDB

    _check_admin: Callable[[Any], None]  # the store actor's: refuses anything but the admin credential

    def _init_spawned_calls(self) -> None:
        # Spawned calls a Python caller waits on here, woken when they finish (at most
        # MAX_STORE_WAITERS at once), and the latest finishes, which gateways follow for their waiters.
        self._call_finished: dict[str, asyncio.Event] = {}
        self._store_waiters = 0
        self._finish_seq = 0
        self._finished_ids: collections.deque[str] = collections.deque(maxlen=FINISHES_REMEMBERED)
        self._finishing = asyncio.Event()
        # Cancelled sync calls per function: whether their replicas are replaced (in memory).
        self._cancels = CancelReplacements()

    def _storage_budget(self) -> int:
        return int(self.db.get_setting("call_storage_per_app", DEFAULT_CALL_STORAGE_PER_APP))

    async def create_call(
        self,
        app: str,
        function: str,
        method: str | None,
        arguments: bytes,
        callback_url: str | None = None,
        max_open: int | None = None,
    ) -> dict[str, Any]:
        """Record a new pending call with its arguments (a JSON object's text, checked by the caller);
        the call runner takes it from here. `{"record": ...}`, or `{"refused": {status, type,
        message}}`: 503 when the function already has `max_open` spawned calls open (its queue bound),
        413/507 when the arguments do not fit the app's spawned-call storage."""
        if not isinstance(arguments, (bytes, str)):
            raise ValueError("a spawned call's arguments are the text of a JSON object")
        raw = arguments.encode() if isinstance(arguments, str) else arguments
        if max_open is not None and self.db.open_call_count(app, function) >= max_open:
            return {"refused": {"status": 503, "type": "QueueFull", "message": ""}}
        budget, used = self._storage_budget(), self.db.call_storage(app)
        if used + len(raw) > budget:
            status, error_type, message = storage_refusal(app, used, len(raw), budget, "call's arguments")
            return {"refused": {"status": status, "type": error_type, "message": message}}
        record = CallRecord(
            call_id=new_call_id(),
            app=app,
            function=callable_label(function, method),
            created_at=time.time(),
            callback=CallbackState(url=callback_url) if callback_url else None,
        )
        self.db.create_call(record, method, raw)
        return {"record": record.model_dump(mode="json")}

    def _known_call(self, call_id: Any, app: str | None) -> CallRecord | None:
        if not isinstance(call_id, str) or not is_call_id(call_id):
            return None
        record = self.db.call(call_id)
        return None if record is None or (app is not None and record.app != app) else record

    async def call_state(self, call_id: str, app: str | None = None) -> dict[str, Any] | None:
        """A call's record without its result (None when unknown, or of another app)."""
        record = self._known_call(call_id, app)
        return None if record is None else record.model_dump(mode="json")

    async def call_json(
        self, call_id: str, app: str | None = None, wait_s: float = 0.0, with_callback: bool = True
    ) -> tuple[str, bytes] | None:
        """(status, the record's JSON with its result) of a call; None when unknown or of another
        app. With `wait_s`, waits up to that long for it to finish, while fewer than
        MAX_STORE_WAITERS calls wait here (the gateway's callers wait in the gateway)."""
        record = self._known_call(call_id, app)
        if record is None:
            return None
        if not record.finished and wait_s > 0 and self._store_waiters < MAX_STORE_WAITERS:
            event = self._call_finished.setdefault(call_id, asyncio.Event())
            self._store_waiters += 1
            try:
                await asyncio.wait_for(event.wait(), timeout=min(float(wait_s), MAX_WAIT_S))
            except TimeoutError:
                pass
            finally:
                self._store_waiters -= 1
            record = self.db.call(call_id) or record
        payload = record.model_dump(mode="json")
        if not with_callback:
            payload.pop("callback", None)
        return record.status, record_json(payload, self.db.call_result(call_id))

    async def finished_calls_after(self, cursor: int, wait_s: float = 0.0) -> tuple[int, list[str] | None]:
        """Calls that finished after `cursor` (a gateway's long poll for its waiters): the new cursor
        and their ids, None when more finished than are remembered (wake every waiter). A negative
        cursor answers the current one at once."""
        if cursor < 0 or cursor > self._finish_seq:
            return self._finish_seq, []
        if cursor == self._finish_seq and wait_s > 0:
            try:
                await asyncio.wait_for(self._finishing.wait(), timeout=min(float(wait_s), MAX_WAIT_S))
            except TimeoutError:
                pass
        oldest = self._finish_seq - len(self._finished_ids)
        if cursor < oldest:
            return self._finish_seq, None
        return self._finish_seq, list(self._finished_ids)[cursor - oldest :]

    async def call_work(self, call_id: str) -> dict[str, Any] | None:
        """What the runner needs to run a call: its record, unit name, method, arguments (JSON text) and
        whether the schedule made it."""
        record = self.db.call(call_id)
        work = self.db.call_work(call_id)
        if record is None or work is None:
            return None
        method, arguments = work
        function = record.function.rsplit(".", 1)[0] if method else record.function
        return {
            "record": record.model_dump(mode="json"),
            "unit": function,
            "method": method,
            "arguments": arguments,
            "scheduled": self.db.is_scheduled_call(call_id),
        }

    async def start_call(self, call_id: str) -> bool:
        return self.db.start_call(call_id, time.time())

    async def finish_call(
        self,
        call_id: str,
        status: str,
        result: bytes | None,
        error: dict[str, Any] | None,
        attempts: list[dict[str, Any]] | None = None,
    ) -> bool:
        """End an open call; a succeeded call keeps its result (JSON text) when it fits the app's
        spawned-call storage, and fails with 507 CallStorageFull when it does not."""
        if status not in FINISHED:
            raise ValueError(f"a call cannot finish as {status!r}")
        if result is not None and not isinstance(result, bytes):
            raise ValueError("a spawned call's result is JSON text (bytes)")
        checked = [CallAttempt.model_validate(a).model_dump() for a in attempts or []]
        record = self.db.call(call_id)
        if status == "succeeded" and result is not None and record is not None:
            budget, used = self._storage_budget(), self.db.call_storage(record.app)
            if used + len(result) > budget:
                code, error_type, message = storage_refusal(record.app, used, len(result), budget, "result")
                status, result, error = "failed", None, {"type": error_type, "message": message, "status": code}
        finished = self.db.finish_call(call_id, status, result, error, time.time(), checked)
        self._wake_call(call_id)
        return finished

    async def cancel_call(self, call_id: str, app: str | None = None) -> tuple[str | None, dict[str, Any] | None]:
        """Cancel an open call: (the status it had, its record now); (None, None) when unknown."""
        if self._known_call(call_id, app) is None:
            return None, None
        previous = self.db.cancel_call(call_id, time.time())
        self._wake_call(call_id)
        now = self.db.call(call_id)
        return previous, now.model_dump(mode="json") if now else None

    def _wake_call(self, call_id: str) -> None:
        event = self._call_finished.pop(call_id, None)
        if event is not None:
            event.set()
        self._finish_seq += 1
        self._finished_ids.append(call_id)
        self._finishing.set()
        self._finishing = asyncio.Event()

    async def cancelled_sync_call(self, app: str, function: str, ran_s: float) -> str:
        """A replica's sync call was cancelled after `ran_s`: "replace" the replica (past the grace,
        within the function's hourly limit) or let the call "finish" (deployments/calls/cancels.py)."""
        self._cancels.grace_s = float(self.db.get_setting("cancel_grace_s", DEFAULT_CANCEL_GRACE_S))
        self._cancels.per_hour = int(
            self.db.get_setting("cancel_replacements_per_hour", DEFAULT_CANCEL_REPLACEMENTS_PER_HOUR)
        )
        if not isinstance(app, str) or not isinstance(function, str) or not isinstance(ran_s, (int, float)):
            return "finish"
        return self._cancels.decide(f"{app}/{function}", float(ran_s), time.time())

    async def cancel_replacements(self, app: str) -> dict[str, dict[str, float | int]]:
        """Per function of `app` that had a cancelled sync call: replacements and calls let finish."""
        prefix = f"{app}/"
        now = time.time()
        return {
            key.removeprefix(prefix): self._cancels.summary(key, now)
            for key in self._cancels.functions
            if key.startswith(prefix)
        }

    async def open_calls(self) -> list[str]:
        return self.db.open_calls()

    async def undelivered_callbacks(self) -> list[str]:
        return self.db.undelivered_callbacks()

    async def record_callback_attempt(
        self, call_id: str, attempt: dict[str, Any], delivered: bool, gave_up: bool
    ) -> None:
        record = self.db.call(call_id)
        if record is None or record.callback is None:
            return
        state = record.callback
        state.attempts.append(CallbackAttempt.model_validate(attempt))
        state.delivered, state.gave_up = delivered, gave_up
        self.db.set_callback(call_id, state.model_dump_json())

    async def webhook_signing_key(self, credential: str) -> str:
        """The key the per-app webhook secrets derive from (created on first use); admin only."""
        self._check_admin(credential)
        key = self.db.get_setting("webhook_signing_key")
        if not key:
            key = secrets.token_hex(32)
            self.db.set_setting("webhook_signing_key", key)
        return key
