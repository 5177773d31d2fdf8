"""HTTP plumbing of the gateway: JSON answers, reading a request's body within the size and time
limits, the shared listening socket and uvicorn embedded in a replica."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deployments import constants

_CAP_BODY = b'{"error":{"type":"TooManyConnections","message":"this gateway replica has all the connections it takes"}}'
CONNECTION_CAP_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_CAP_BODY)).encode() + b"\r\n\r\n" + _CAP_BODY
)


@dataclass(frozen=True)
class ClientLimits:
    """What the gateway allows a client (`raygpu up --header-timeout`, `--body-timeout`): a body up to
    `max_body_bytes`, a request's headers within `header_timeout_s` of the connection opening (or of
    the request's first byte), its body within `body_timeout_s`."""

    max_body_bytes: int = constants.MAX_BODY_BYTES
    header_timeout_s: float = constants.HEADER_TIMEOUT_S
    body_timeout_s: float = constants.BODY_TIMEOUT_S


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body iterator however the response ends. A client that
    goes away while a chunk is being sent otherwise leaves the iterator suspended for the garbage
    collector, and with it the replica's generation, for as long as that takes."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=json.dumps(payload, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(
    status: int,
    error_type: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: Any = None,
    error_id: str | None = None,
) -> Response:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details is not None:
        error["details"] = details
    if error_id is not None:
        error["id"] = error_id
    return json_response(status, {"error": error}, headers)


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol with a cap on open connections (more are answered 503 and closed) and
    a deadline for each request's headers (a connection that stalls before them is closed)."""

    class GuardedHttpProtocol(HttpToolsProtocol):
        _header_deadline: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                transport.write(CONNECTION_CAP_RESPONSE)
                transport.close()
                return
            super().connection_made(transport)
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            self._header_deadline = self.loop.call_later(header_timeout_s, self._headers_overdue)

        def _disarm_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_overdue(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_deadline is None:
                self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_header_deadline()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            if self in self.connections or getattr(self, "transport", None) is not None:
                super().connection_lost(exc)

    return GuardedHttpProtocol


def gateway_config(
    app: Any,
    *,
    max_connections: int,
    header_timeout_s: float,
    keep_alive_s: float,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> uvicorn.Config:
    """uvicorn as the gateway runs it: guarded connections, no lifespan, no server header, no proxy
    headers trusted; HTTPS only when given a PEM certificate (chain) and its key."""
    return uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level="warning",
        loop="none",
        timeout_keep_alive=int(keep_alive_s),
        http=guarded_protocol(max_connections, header_timeout_s),
        server_header=False,
        log_config=None,
        interface="asgi3",
        proxy_headers=False,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside a replica: the actor process owns its signals, not the HTTP server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that every gateway replica on the node binds at once (SO_REUSEPORT):
    the kernel spreads connections across them, and a replacement replica binds before the old
    one leaves, so a rolling restart of the gateway refuses no connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def read_body(request: Request, limits: ClientLimits) -> bytes | Response:
    """The whole body, or the answer refusing it: 413 past the size limit (read before only as
    far as needed for the client to see it), 408 when it does not arrive in time."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        return await too_large(request, limits)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return Response(status_code=499)  # nobody is listening for an answer
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limits.max_body_bytes:
                    return await too_large(request, limits)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        return error_response(
            408,
            "RequestTimeout",
            f"the request body did not arrive within {limits.body_timeout_s:g} s",
            headers={"Connection": "close"},
        )


async def too_large(request: Request, limits: ClientLimits) -> Response:
    """413, closing the connection. A client waiting on `Expect: 100-continue` (curl) is answered
    at once; one that sends the whole body first (requests, urllib) has it read and discarded,
    up to a bound, so it reads the 413 instead of a reset connection."""
    if "100-continue" not in request.headers.get("expect", "").lower():
        drained = 0
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                while drained <= constants.MAX_DRAIN_BYTES:
                    message = await request.receive()
                    if message["type"] == "http.disconnect":
                        break
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            pass
    return error_response(
        413,
        "PayloadTooLarge",
        f"request body exceeds the gateway limit of {limits.max_body_bytes} bytes",
        headers={"Connection": "close"},
    )
