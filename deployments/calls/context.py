"""What travels with a call through a pipeline: its call id and its deadline. The gateway takes the
id from `x-raygpu-call-id` (or makes one) and answers with it; a replica puts both in the context
of the user code it runs, and every call that code makes carries them on. Pure: no Ray."""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from deployments.calls.records import new_call_id

CALL_ID_HEADER = "x-raygpu-call-id"
# The wall-clock time (Unix seconds) by which the caller stops waiting: a nested call gets at most
# what is left of it.
DEADLINE_HEADER = "x-raygpu-deadline"
ATTEMPT_HEADER = "x-raygpu-attempt"  # which run of the call this is (1 for the first)
ATTEMPTS_HEADER = "x-raygpu-attempts"  # on the answer: how many runs it took
# Headers only raygpu sets on the way to a replica; a client's own are replaced.
INTERNAL_HEADERS = frozenset({CALL_ID_HEADER, DEADLINE_HEADER, ATTEMPT_HEADER})
CALL_ID_MAX_LENGTH = 128
CALL_ID_SYNTAX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class CallIdError(ValueError):
    """A caller's `x-raygpu-call-id` is not one raygpu can carry."""


def checked_call_id(value: str | None) -> str:
    """The call id a caller sent (validated), or a new one when it sent none."""
    if value is None or value == "":
        return new_call_id()
    if not CALL_ID_SYNTAX.match(value):
        raise CallIdError(
            f"{CALL_ID_HEADER} must be 1-{CALL_ID_MAX_LENGTH} characters of letters, digits and . _ : - "
            "(starting with a letter or digit)"
        )
    return value


@dataclass(frozen=True)
class CallContext:
    """The call a replica is running: its id, attempt, and deadline (wall clock, None: none)."""

    call_id: str
    deadline: float | None = None
    attempt: int = 1

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("raygpu_call", default=None)


def current_call() -> CallContext | None:
    """The call this code runs under (None outside a call)."""
    return _current.get()


def current_call_id() -> str | None:
    """The id of the call this code runs under: what `raygpu calls show` lists its stages by."""
    call = _current.get()
    return call.call_id if call is not None else None


@contextmanager
def running_call(call: CallContext | None) -> Iterator[None]:
    """Run the code inside as part of `call` (its id and deadline pass on to the calls it makes)."""
    token = _current.set(call)
    try:
        yield
    finally:
        _current.reset(token)


def context_of(headers: dict[str, str] | None) -> CallContext | None:
    """The call context a replica received in its call's headers (None when it got none: a caller
    from before call ids). Values that do not parse are ignored: they came from raygpu itself."""
    headers = headers or {}
    call_id = headers.get(CALL_ID_HEADER)
    if not call_id or not CALL_ID_SYNTAX.match(call_id):
        return None
    try:
        deadline = float(headers[DEADLINE_HEADER]) if DEADLINE_HEADER in headers else None
    except ValueError:
        deadline = None
    try:
        attempt = max(1, int(headers.get(ATTEMPT_HEADER, "1")))
    except ValueError:
        attempt = 1
    return CallContext(call_id, deadline, attempt)
