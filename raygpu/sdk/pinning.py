"""Certificate pinning for a gateway serving a self-signed certificate (`raygpu up --tls-self-signed`):
the CLI accepts the gateway whose certificate has the SHA-256 fingerprint `raygpu login --fingerprint`
was given, and no other; the chain and the host name are not checked (the pin replaces both)."""

from __future__ import annotations

import hashlib
import http.client
import re
import ssl
import urllib.request
from typing import Any

from requests.adapters import HTTPAdapter

_HEX = re.compile(r"^[0-9a-f]{64}$")


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits (colons, spaces and a `sha256:` prefix
    allowed); ValueError for anything else."""
    raw = text.strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    if not _HEX.match(raw):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, as `raygpu up` printed it)")
    return raw


def certificate_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def display_fingerprint(fingerprint: str) -> str:
    return "sha256:" + fingerprint


class PinnedAdapter(HTTPAdapter):
    """A requests adapter that accepts only the certificate with this fingerprint."""

    def __init__(self, fingerprint: str):
        self.fingerprint = normalize_fingerprint(fingerprint)
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self.fingerprint
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, False, cert)  # the pin checks the peer instead of a CA
        conn.assert_fingerprint = self.fingerprint


def _pinned_connection(fingerprint: str) -> type[http.client.HTTPSConnection]:
    class PinnedHTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            peer = self.sock.getpeercert(binary_form=True) if self.sock is not None else None
            if peer is None or certificate_fingerprint(peer) != fingerprint:
                self.close()
                raise ssl.SSLError(
                    f"the gateway's certificate is not the pinned one ({display_fingerprint(fingerprint)}); "
                    "log in again with the fingerprint `raygpu up` printed"
                )

    return PinnedHTTPSConnection


class PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    """A urllib handler that accepts only the certificate with this fingerprint."""

    def __init__(self, fingerprint: str):
        self.fingerprint = normalize_fingerprint(fingerprint)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        super().__init__(context=context)

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_pinned_connection(self.fingerprint), req, context=self._context)


def url_opener(fingerprint: str | None) -> urllib.request.OpenerDirector:
    """urllib's opener, pinned when a fingerprint is given."""
    return (
        urllib.request.build_opener(PinnedHTTPSHandler(fingerprint)) if fingerprint else urllib.request.build_opener()
    )
