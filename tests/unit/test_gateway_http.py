"""The gateway's HTTP guard on a real uvicorn server in this process (no Ray): the connection cap
answers 503 and closes, and a connection that stalls before its headers is closed."""

import asyncio
import socket
import threading
import time

import uvicorn

from deployments.gateway.http import EmbeddedServer, guarded_protocol, json_response, reuse_port_socket
from raygpu.local_cluster import free_port


async def ok_app(scope, receive, send):
    if scope["type"] == "http":
        await json_response(200, {"ok": True})(scope, receive, send)


class Server:
    def __init__(self, max_connections: int, header_timeout_s: float):
        self.port = free_port()
        config = uvicorn.Config(
            ok_app,
            lifespan="off",
            log_level="warning",
            log_config=None,
            http=guarded_protocol(max_connections, header_timeout_s),
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
