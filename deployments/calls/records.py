"""Spawned calls as the control plane keeps them: the record a caller polls, its states and the
moves between them. Pure: no Ray, no I/O."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Literal

from pydantic import BaseModel, Field

CallStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
CALL_ID_PREFIX = "fc-"
CALL_ID_PATTERN = re.compile(r"^fc-[A-Za-z0-9_-]{22}$")
# How long the records of spawned calls are kept by default (`raygpu up --call-retention`).
DEFAULT_CALL_RETENTION_S = 7 * 24 * 3600.0
# The longest `?wait=` a poll may ask for; longer waits are answered after this.
MAX_WAIT_S = 60.0
# Bytes of arguments and results one app's spawned calls may keep, open and finished together
# (`raygpu up --call-storage-per-app`): a spawn past it is refused (507), a result past it is not kept.
DEFAULT_CALL_STORAGE_PER_APP = 2**30


def new_call_id() -> str:
    return CALL_ID_PREFIX + secrets.token_urlsafe(16)


def is_call_id(value: str) -> bool:
    return bool(CALL_ID_PATTERN.match(value))


class CallbackAttempt(BaseModel):
    at: float
    status: int | None = None  # the receiver's HTTP status, None when it could not be reached
    error: str | None = None


class CallbackState(BaseModel):
    """The webhook of a spawned call: where the final record goes and how each delivery went."""

    url: str
    attempts: list[CallbackAttempt] = Field(default_factory=list)
    delivered: bool = False
    gave_up: bool = False


class CallAttempt(BaseModel):
    """One run of a spawned call: when it ended and how (a retry policy runs a call again when its
    code raised)."""

    attempt: int
    finished_at: float
    status: int
    error_type: str | None = None


class CallRecord(BaseModel):
    """One spawned call: what `GET /{app}/calls/{call_id}` answers and a webhook receives."""

    call_id: str
    app: str
    function: str  # the function, or Class.method
    status: CallStatus = "pending"
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    callback: CallbackState | None = None
    attempts: list[CallAttempt] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def callable_label(function: str, method: str | None) -> str:
    return f"{function}.{method}" if method else function


def parse_wait(raw: str | None) -> float:
    """The `?wait=S` of a poll: 0 when absent, at most MAX_WAIT_S; ValueError for anything else."""
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"wait must be a number of seconds, not {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"wait must be a number of seconds from 0 to {MAX_WAIT_S:g}, not {raw!r}")
    return min(value, MAX_WAIT_S)


def record_json(record: dict[str, Any], result: bytes | None) -> bytes:
    """A record's JSON with its result spliced in as the JSON text it is kept as: a large result is
    never parsed and encoded again on its way to a caller."""
    head = json.dumps({k: v for k, v in record.items() if k != "result"}, separators=(",", ":")).encode()
    return head[:-1] + b',"result":' + (result if result is not None else b"null") + b"}"


def storage_refusal(app: str, used: int, adding: int, budget: int, what: str) -> tuple[int, str, str]:
    """(status, error type, message) refusing `adding` bytes to an app's spawned-call storage."""
    if adding > budget:
        return (
            413,
            "PayloadTooLarge",
            f"the {what} ({adding} bytes) is larger than app {app!r}'s whole spawned-call storage of "
            f"{budget} bytes (`raygpu up --call-storage-per-app`)",
        )
    return (
        507,
        "CallStorageFull",
        f"app {app!r}'s spawned calls keep {used} of their {budget} bytes; the {what} ({adding} bytes) "
        "does not fit. Read and let finished calls age out (`raygpu up --call-retention`), send smaller "
        "payloads, or raise `raygpu up --call-storage-per-app`",
    )
