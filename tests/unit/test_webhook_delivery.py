"""Webhook deliveries against a real local HTTP server: the POST goes to the address the check
accepted (a host that rebinds to loopback after the check gets nothing), every address that is not
globally routable is refused unless allowed, the record keeps no connection error text, and the
Standard Webhooks signature verifies with the `standardwebhooks` package and fails once replayed."""

import datetime as dt
import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from deployments.calls.callbacks import (
    SIGNATURE_HEADER,
    CallbackRefused,
    check_callback_url,
    globally_routable,
    sign,
    standard_webhook_headers,
    verify,
    webhook_secret,
)
from deployments.calls.delivery import post_callback


@pytest.fixture()
def receiver():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()


def test_every_address_that_is_not_globally_routable_is_refused():
    refused = [
        "100.100.100.200",  # shared address space: a cloud metadata address
        "100.64.0.1",
        "169.254.169.254",
        "127.0.0.1",
        "10.0.0.7",
        "192.168.1.1",
        "::1",
        "fe80::1",
        "fec0::1",  # site-local
        "fc00::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "2002:a00:7::1",  # 6to4 around 10.0.0.7
        "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo with a documentation-range client
        "0.0.0.0",
        "224.0.0.1",
    ]
    for raw in refused:
        assert not globally_routable(ipaddress.ip_address(raw)), raw
        with pytest.raises(CallbackRefused, match="not a globally routable"):
            check_callback_url("https://hooks.example.com/x", resolve=lambda h, p, raw=raw: [raw])
    for raw in ("93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34", "2002:5db8:d822::1", "64:ff9b::5db8:d822"):
        assert globally_routable(ipaddress.ip_address(raw)), raw
    assert check_callback_url("http://meta/", ["100.64.0.0/10"], resolve=lambda h, p: ["100.100.100.200"])


def test_a_host_that_rebinds_to_loopback_after_the_check_gets_no_request(receiver):
    port, received = receiver
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # public for the check, loopback next

    def rebinding(host, p):
        return next(answers, ["127.0.0.1"])

    outcome = post_callback(f"http://rebind.example.com:{port}/hook", b"{}", {}, [], resolve=rebinding, timeout_s=1)
    assert received == []
    assert outcome["error"] == "unreachable" and set(outcome) == {"at", "error"}  # no connection error text


def test_a_refused_delivery_is_recorded_as_refused_only(receiver):
    port, received = receiver
    outcome = post_callback(f"http://h.example.com:{port}/", b"{}", {}, [], resolve=lambda h, p: ["127.0.0.1"])
    assert outcome["error"] == "refused" and outcome["refused"] is True and received == []


def test_an_allowed_delivery_goes_to_the_checked_address_with_the_host_name_and_verifies(receiver):
    port, received = receiver
    secret = webhook_secret("signing-key", "shop")
    body = json.dumps({"call_id": "fc-x", "status": "succeeded"}).encode()
    headers = {SIGNATURE_HEADER: sign(secret, body), **standard_webhook_headers(secret, "fc-x", body)}
    outcome = post_callback(
        f"http://hooks.example.test:{port}/in?a=1", body, headers, ["127.0.0.1/32"], resolve=lambda h, p: ["127.0.0.1"]
    )
    assert outcome["status"] == 204 and len(received) == 1
    got, got_body = received[0]
    got = {k.lower(): v for k, v in got.items()}
    assert got["host"] == f"hooks.example.test:{port}" and got_body == body
    assert Webhook(secret).verify(got_body, got) == {"call_id": "fc-x", "status": "succeeded"}
    assert verify(secret, got_body, got[SIGNATURE_HEADER])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(got_body + b" ", got)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook_secret("signing-key", "other")).verify(got_body, got)


def test_a_captured_delivery_replayed_later_fails_verification():
    secret = webhook_secret("signing-key", "shop")
    body = b'{"status":"succeeded"}'
    then = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    captured = standard_webhook_headers(secret, "fc-y", body, now=then)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, captured)
    fresh = standard_webhook_headers(secret, "fc-y", body)
    assert fresh["webhook-id"] == captured["webhook-id"] and fresh["webhook-signature"] != captured["webhook-signature"]
    Webhook(secret).verify(body, fresh)
