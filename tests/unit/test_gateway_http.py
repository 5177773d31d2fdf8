"""The gateway's HTTP server, configured as the gateway configures it, on a real uvicorn server in
this process (no Ray): the connection cap answers 503 and closes, a connection that stalls before
its headers is closed, and with a certificate and key it serves HTTPS only."""

import asyncio
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import requests

from deployments.gateway.http import EmbeddedServer, gateway_config, json_response, reuse_port_socket
from raygpu.controlplane.local_cluster import free_port


async def ok_app(scope, receive, send):
    if scope["type"] == "http":
        await json_response(200, {"ok": True})(scope, receive, send)


class Server:
    def __init__(self, max_connections: int, header_timeout_s: float, tls: tuple[str, str] | None = None):
        self.port = free_port()
        config = gateway_config(
            ok_app,
            max_connections=max_connections,
            header_timeout_s=header_timeout_s,
            keep_alive_s=5,
            tls_cert=tls[0] if tls else None,
            tls_key=tls[1] if tls else None,
        )
        self.server = EmbeddedServer(config)
        sock = reuse_port_socket("127.0.0.1", self.port)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server._serve([sock])), daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and a content-length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return read_response(sock)


def test_connections_past_the_cap_are_answered_503_and_closed():
    server = Server(max_connections=2, header_timeout_s=30)
    try:
        first, second = server.connect(), server.connect()
        assert get(first).startswith(b"HTTP/1.1 200")
        third = server.connect()
        answer = read_response(third)
        assert answer.startswith(b"HTTP/1.1 503") and b"TooManyConnections" in answer and b"retry-after: 1" in answer
        assert third.recv(1) == b""  # closed
        assert get(second).startswith(b"HTTP/1.1 200")  # the admitted ones keep working
        first.close()
        time.sleep(0.2)
        fourth = server.connect()
        assert get(fourth).startswith(b"HTTP/1.1 200")  # a freed slot is taken again
    finally:
        server.stop()


def test_a_connection_that_stalls_before_its_headers_is_closed():
    server = Server(max_connections=100, header_timeout_s=0.5)
    try:
        silent, partial, prompt = server.connect(), server.connect(), server.connect()
        partial.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        assert get(prompt).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert silent.recv(1) == b"" and partial.recv(1) == b""
        assert time.monotonic() - started < 4
        time.sleep(0.7)
        assert get(prompt).startswith(b"HTTP/1.1 200")  # keep-alive between requests is not a stall
    finally:
        server.stop()


def self_signed(tmp_path: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files (as `raygpu up --tls-self-signed` makes them)."""
    from raygpu.controlplane.self_signed import ensure_self_signed

    cert, key, _ = ensure_self_signed(tmp_path, ["127.0.0.1"])
    return cert, key


def test_with_a_certificate_and_key_the_gateway_serves_https_only(tmp_path):
    cert, key = self_signed(tmp_path)
    server = Server(max_connections=100, header_timeout_s=30, tls=(cert, key))
    try:
        answer = requests.get(f"https://127.0.0.1:{server.port}/", verify=cert, timeout=10)
        assert answer.status_code == 200 and answer.json() == {"ok": True}
        with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust it is refused
            requests.get(f"https://127.0.0.1:{server.port}/", timeout=10)
        plain = server.connect()  # plain HTTP on the TLS port gets no HTTP answer
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not plain.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()


def test_a_key_that_does_not_match_the_certificate_is_refused_at_start(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    config = gateway_config(
        ok_app, max_connections=10, header_timeout_s=5, keep_alive_s=5, tls_cert=cert, tls_key=other_key
    )
    with pytest.raises(ssl.SSLError):
        config.load()


def test_a_self_signed_gateway_is_reached_only_through_its_pinned_fingerprint(tmp_path):
    import os
    import urllib.error

    from raygpu.controlplane.self_signed import ensure_self_signed
    from raygpu.sdk.pinning import PinnedAdapter, normalize_fingerprint, url_opener

    cert, key, fingerprint = ensure_self_signed(tmp_path, ["gpu.example.com", "127.0.0.1"])
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert ensure_self_signed(tmp_path, ["other"])[2] == fingerprint  # kept: pinned logins stay valid
    assert normalize_fingerprint("SHA256:" + ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2))) == fingerprint
    with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
        normalize_fingerprint("abc")
    wrong = "0" * 64
    server = Server(max_connections=100, header_timeout_s=30, tls=(cert, key))
    try:
        url = f"https://127.0.0.1:{server.port}/"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, timeout=10)  # not trusted by any CA
        pinned = requests.Session()
        pinned.verify = False
        pinned.mount("https://", PinnedAdapter(fingerprint))
        assert pinned.get(url, timeout=10).json() == {"ok": True}
        other = requests.Session()
        other.verify = False
        other.mount("https://", PinnedAdapter(wrong))
        with pytest.raises(requests.exceptions.SSLError):
            other.get(url, timeout=10)
        with url_opener(fingerprint).open(url, timeout=10) as answer:
            assert answer.status == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError), match="pinned"):
            url_opener(wrong).open(url, timeout=10)
    finally:
        server.stop()
