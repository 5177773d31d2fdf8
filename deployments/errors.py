"""The errors a raygpu caller can meet, the same wherever a call comes from (HTTP, a spawned call,
the Python client, one function calling another): each is an HTTP status and a JSON error body
`{"error": {"type", "message"[, "details"]}}` over HTTP, and an exception of its own in Python.
Pure: no Ray."""

from __future__ import annotations

from typing import Any

# Set on an error answer that is not raygpu's own: "user" when the function's code raised (its retry
# policy applies), "callee" when a raygpu call error of a call it made escaped its code (the outer
# caller gets that error as it was; it is not retried there).
ERROR_SOURCE_HEADER = "x-raygpu-error-source"


class RaygpuError(Exception):
    """Base class of raygpu's user-facing errors."""


class InvalidSpecError(RaygpuError, ValueError):
    """A decorator was given an invalid setting; the message names the field."""


class RemoteCallError(RaygpuError):
    """A call of a deployed function failed; `status` is the HTTP status the gateway answers with,
    `error_type` the JSON error's type."""

    default_status = 500
    default_type = "Error"

    def __init__(
        self,
        status: int | None = None,
        error_type: str | None = None,
        message: str = "",
        details: Any = None,
        headers: dict[str, str] | None = None,
    ):
        self.status = status if status is not None else self.default_status
        self.error_type = error_type or self.default_type
        self.message = message
        self.details = details
        self.headers = dict(headers or {})
        super().__init__(f"{self.error_type}: {message}")

    def payload(self) -> dict[str, Any]:
        """The JSON body of this error's HTTP answer."""
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.status, self.error_type, self.message, self.details, self.headers))


def _rebuild(cls: type[RemoteCallError], *args: Any) -> RemoteCallError:
    error = cls.__new__(cls)
    RemoteCallError.__init__(error, *args)
    return error


class QueueFull(RemoteCallError):
    """The function holds as many calls as its queue bound (503); retry after `retry_after` s."""

    default_status = 503
    default_type = "QueueFull"

    @property
    def retry_after(self) -> float:
        try:
            return float(self.headers.get("Retry-After", 1))
        except ValueError:
            return 1.0


class FunctionTimeout(RemoteCallError):
    """The call did not finish within the function's timeout or the caller's deadline (504)."""

    default_status = 504
    default_type = "Timeout"


class RemoteError(RemoteCallError):
    """The function's own code raised (500): `remote_type` is the exception's type, `message` its text."""

    default_status = 500

    @property
    def remote_type(self) -> str:
        return self.error_type


class ReplicaLost(RemoteCallError):
    """The replica running the call went away, and so did those it was resent to (503)."""

    default_status = 503
    default_type = "ReplicaLost"


class InvalidArguments(RemoteCallError):
    """The arguments do not match the function's signature (422); `details` lists each problem."""

    default_status = 422
    default_type = "ValidationError"


class Unavailable(RemoteCallError):
    """The function could not be reached just now (503); retry shortly."""

    default_status = 503
    default_type = "Unavailable"


class FunctionNotFound(RemoteCallError):
    """The app or function is not deployed (404)."""

    default_status = 404
    default_type = "NotFound"


_BY_TYPE: dict[str, type[RemoteCallError]] = {
    "QueueFull": QueueFull,
    "Timeout": FunctionTimeout,
    "ReplicaLost": ReplicaLost,
    "ValidationError": InvalidArguments,
    "Unavailable": Unavailable,
}


def call_error(status: int, payload: Any, headers: dict[str, str] | None = None) -> RemoteCallError:
    """The exception of an error answer (status, JSON body, response headers)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {"type": "Error", "message": str(payload)}
    error_type = str(error.get("type") or "Error")
    message = str(error.get("message", ""))
    headers = {k: v for k, v in (headers or {}).items() if k.lower() in ("retry-after", ERROR_SOURCE_HEADER)}
    source = {k.lower(): v for k, v in headers.items()}.get(ERROR_SOURCE_HEADER)
    cls = _BY_TYPE.get(error_type)
    if cls is None and source in ("user", "callee") and status == 500:
        cls = RemoteError
    if cls is None and status == 404 and error_type == "NotFound":
        cls = FunctionNotFound
    return (cls or RemoteCallError)(status, error_type, message, error.get("details"), headers)
