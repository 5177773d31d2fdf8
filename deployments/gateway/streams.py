"""Streamed answers at the gateway: the body of a stream (each item as it arrives, the replica's
generation cancelled when the client leaves), the encodings of a generator's items (ndjson, SSE),
and waiting for a stream's first item unless the client goes away first."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request


def stream_body(stream: Any, release: Callable[[], None], encode: Callable[[Any], bytes]) -> Any:
    """The body of a streamed answer: each item encoded as it arrives. The call ends when the
    stream does, or when the client goes away: then the replica's generation is cancelled."""

    async def body() -> Any:
        finished = False
        try:
            async for chunk in stream:
                yield encode(chunk)
            finished = True
        finally:
            if not finished:
                stream.cancel()
            release()

    return body()


def ndjson_line(chunk: tuple[str, Any]) -> bytes:
    """A generator's item (or final error) as one line of JSON."""
    kind, value = chunk
    if kind == "error":
        return json.dumps(value, separators=(",", ":")).encode() + b"\n"
    return value + b"\n"


def sse_event(chunk: tuple[str, Any]) -> bytes:
    """A generator's item as a server-sent event (`event: error` for its final error)."""
    kind, value = chunk
    if kind == "error":
        return b"event: error\ndata: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"
    return b"data: " + value + b"\n\n"


async def first_unless_disconnected(stream: Any, request: Request, timeout_s: float) -> Any:
    """The stream's first item, or None as soon as the client disconnects (its body was read, so
    the next ASGI message can only be the disconnect). TimeoutError past `timeout_s`."""
    first = asyncio.ensure_future(stream.__anext__())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({first, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if first in done:
            return first.result()
        if gone in done:
            first.cancel()
            return None
        first.cancel()
        raise TimeoutError
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _await(response: Any) -> Any:
    return await response
