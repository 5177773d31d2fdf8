"""`wait_for_gateway`: a served generation counts when it is ours, or a later one the store really
issued; a higher number the store never issued (a table from before a restart) does not."""

import http.server
import json
import threading
from types import SimpleNamespace

import pytest

from raygpu.sdk import control
from raygpu.sdk.errors import DeployError


class Gateway:
    def __init__(self, generation: int):
        self.generation = generation
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = json.dumps({"status": "ok", "generation": owner.generation}).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def store_at(monkeypatch):
    current = {"generation": 0}
    fake = SimpleNamespace(ping=SimpleNamespace(remote=lambda: dict(current)))
    monkeypatch.setattr(control, "store", lambda: fake)
    monkeypatch.setattr(control.ray, "get", lambda value, **kwargs: value)
    return current


def test_our_generation_or_a_later_issued_one_is_accepted(store_at):
    gateway = Gateway(7)
    store_at["generation"] = 7
    control.wait_for_gateway(gateway.url, 7, 2)
    gateway.generation, store_at["generation"] = 9, 9  # another change landed right after ours
    control.wait_for_gateway(gateway.url, 7, 2)
    gateway.server.shutdown()


def test_a_higher_number_the_store_never_issued_is_not_accepted(store_at):
    gateway = Gateway(50)  # a table from before the store restarted from an older state file
    store_at["generation"] = 8
    with pytest.raises(DeployError, match="did not pick up the change"):
        control.wait_for_gateway(gateway.url, 8, 0.5)
    gateway.server.shutdown()
