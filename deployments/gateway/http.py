"""HTTP plumbing of the gateway: JSON answers, the shared listening socket and uvicorn embedded
in a replica."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.responses import Response


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=json.dumps(payload, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None, details: Any = None
) -> Response:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details is not None:
        error["details"] = details
    return json_response(status, {"error": error}, headers)


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
