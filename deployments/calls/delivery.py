"""One webhook delivery: a POST to the address the callback URL's check resolved, never to what its
host resolves to a moment later (a host that answers a public address for the check and loopback
for the connection gets nothing), TLS verifying the host name, no redirects followed. What goes in
the call's record is "refused", "unreachable" or the receiver's HTTP status: never a connection
error's text (which would make the webhook a port scanner). No Ray."""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from deployments.calls.callbacks import (
    DELIVERY_TIMEOUT_S,
    CallbackRefused,
    Resolver,
    check_callback_url,
    system_resolver,
)

logger = logging.getLogger(__name__)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to a checked address, with the URL's host in the Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is verified for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post_callback(
    url: str,
    body: bytes,
    headers: dict[str, str],
    allowed: list[str],
    resolve: Resolver = system_resolver,
    timeout_s: float = DELIVERY_TIMEOUT_S,
    tls_context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """One delivery attempt: {"at", "status"} or {"at", "error": "refused" | "unreachable"[,
    "refused": True]}. The URL is checked again first (what its host resolves to may have changed
    since the call was spawned), and the POST goes to an address that check accepted."""
    at = time.time()
    try:
        _, addresses = check_callback_url(url, allowed, resolve)
    except CallbackRefused as exc:
        logger.warning("raygpu webhook: %s refused: %s", url, exc)
        return {"at": at, "error": "refused", "refused": True}
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = addresses[0].split("%", 1)[0]
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = _PinnedHTTPSConnection(
            host, port, address, timeout_s, tls_context or ssl.create_default_context()
        )
    else:
        connection = _PinnedHTTPConnection(host, port, address, timeout_s)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(
            "POST",
            path,
            body=body,
            headers={"Content-Type": "application/json", "User-Agent": "raygpu-webhook", **headers},
        )
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        logger.warning("raygpu webhook: %s (at %s) unreachable: %s", url, address, exc)
        return {"at": at, "error": "unreachable"}
    finally:
        connection.close()
    return {"at": at, "status": status}
