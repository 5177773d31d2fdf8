"""A call's keyword arguments as the JSON text its caller sent. A large body is checked by the
gateway off its event loop and travels to the replica as text, which the replica decodes: the
gateway's loop never builds (or unpickles) a large Python object. Pure: no Ray."""

from __future__ import annotations

import json
from typing import Any


class JsonArguments:
    """Keyword arguments as checked JSON text (a JSON object; `deployments.gateway.body` checked it)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes):
        self.raw = raw

    def decode(self) -> Any:
        return json.loads(self.raw) if self.raw.strip() else {}

    def __len__(self) -> int:
        return len(self.raw)

    def __reduce__(self) -> tuple[Any, ...]:
        return (JsonArguments, (self.raw,))

    def __repr__(self) -> str:
        return f"JsonArguments({len(self.raw)} bytes)"


def decoded(arguments: Any) -> Any:
    """The arguments as Python values, whichever form they travelled in."""
    return arguments.decode() if isinstance(arguments, JsonArguments) else arguments
