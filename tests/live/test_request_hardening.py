"""The request path under hostile and unlucky input, on the real gateway: malformed and oversized
bodies, user and internal errors, fuzzing from /docs, idle connections, bursts at zero, and a sync
call that outlives its timeout."""

import concurrent.futures
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import requests
from conftest import APPS, CLIENT_TIMEOUT_S

from deployments import constants

pytestmark = pytest.mark.slow
BIG = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def hardened(cluster):
    cluster.deploy(APPS / "hardened.py")
    return cluster


def error_of(response: requests.Response) -> dict:
    return response.json()["error"]


@pytest.mark.parametrize(
    "body, error_type",
    [
        (b'{"order": {"lines": []}, "scale": ' + b"9" * 5000 + b"}", "NumberTooLarge"),
        (b'{"order": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "NestingTooDeep"),
        (b'{"note": "\xff\xfe", "order": {"lines": []}}', "InvalidUTF8"),
        (b'[{"order": {"lines": []}}]', "WrongBodyType"),
        (b'{"order": ', "MalformedJSON"),
    ],
)
def test_malformed_bodies_answer_400_naming_the_problem(hardened, body, error_type):
    r = requests.post(f"{hardened.url}/hardened/total", data=body, timeout=60)
    assert r.status_code == 400 and error_of(r)["type"] == error_type, r.text[:300]
    ok = hardened.post("/hardened/total", {"order": {"lines": [{"sku": "a", "qty": 2}]}})
    assert ok.status_code == 200 and ok.json()["items"] == 2


def test_an_oversized_body_gets_a_413_that_clients_can_read(hardened, tmp_path):
    url = f"{hardened.url}/hardened/total"
    body = b"x" * BIG
    r = requests.post(url, data=body, timeout=120)
    assert r.status_code == 413 and error_of(r)["type"] == "PayloadTooLarge"
    r = requests.post(url, data=iter([b"x" * 1024 * 1024] * 64), timeout=120)  # chunked, no length
    assert r.status_code == 413
    try:
        urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=120)
        raise AssertionError("urllib got no error")
    except urllib.error.HTTPError as exc:
        assert exc.code == 413 and b"PayloadTooLarge" in exc.read()
    # what curl does with a large body: `Expect: 100-continue`, and the body only after a 100
    host, port = hardened.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /hardened/total HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"PayloadTooLarge" in answer  # answered without the body
    if shutil.which("curl"):
        path = tmp_path / "big.bin"
        path.write_bytes(body)
        out = subprocess.run(
            ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--data-binary", f"@{path}", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.stdout.rstrip().endswith("413") and "PayloadTooLarge" in out.stdout, out.stdout + out.stderr
    assert hardened.post("/hardened/total", {"order": {"lines": []}}).status_code == 200


def test_a_user_exception_answers_500_with_its_type_and_message(hardened):
    r = hardened.post("/hardened/fail", {"message": "out of stock"})
    assert r.status_code == 500 and error_of(r) == {"type": "ValueError", "message": "out of stock"}


def refs_in(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs_in(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs_in(v)]
    return []


def test_every_ref_in_docs_resolves(hardened):
    doc = requests.get(f"{hardened.url}/hardened/docs", timeout=30).json()
    refs = refs_in(doc)
    assert refs, "the nested models are referenced"
    for ref in refs:
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    assert set(doc["components"]["schemas"]) == {"Line", "Order"}  # one component per model


def fuzz(url: str, app: str, paths: set[str], examples: int) -> list[str]:
    """Schemathesis cases (valid and invalid) for `paths` of an app's /docs; the answers that are
    raygpu's own 5xx, or 5xx the document does not list."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    doc = requests.get(f"{url}/{app}/docs", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    problems: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path not in paths:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call(base_url=url, session=session, timeout=60)
                if response.status_code < 500:
                    return
                try:
                    error = response.json()["error"]
                except (ValueError, KeyError, TypeError):
                    error = {"type": "?", "message": response.text[:200]}
                documented = str(response.status_code) in operation.definition.raw.get("responses", {})
                if error.get("type") == "InternalError" or not documented or error.get("id"):
                    problems.append(f"{case.method} {case.path} {case.body!r:.200} -> {response.status_code} {error}")

            check()
    return problems


def test_fuzzing_from_the_openapi_documents_finds_no_raygpu_5xx(hardened, examples):
    problems = fuzz(hardened.url, "hardened", {"/hardened/total", "/hardened/fail"}, examples=60)
    problems += fuzz(hardened.url, "hello", {"/hello/greet"}, examples=30)
    problems += fuzz(hardened.url, "embeddings", {"/embeddings/Embedder/embed"}, examples=15)
    assert not problems, "\n".join(problems[:20])


def test_a_thousand_idle_connections_do_not_delay_a_call(hardened):
    assert hardened.post("/hardened/total", {"order": {"lines": []}}).status_code == 200  # warm
    host, port = hardened.url.removeprefix("http://").split(":")
    idle = []
    try:
        for i in range(1000):
            sock = socket.create_connection((host, int(port)), timeout=10)
            if i % 2:
                sock.sendall(b"POST /hardened/total HTTP/1.1\r\nHost: x\r\n")  # headers never finish
            idle.append(sock)
        started = time.monotonic()
        r = requests.post(
            f"{hardened.url}/hardened/total", json={"order": {"lines": [{"sku": "a"}]}}, timeout=2
        )  # answered within 2 s, or requests raises
        assert r.status_code == 200 and time.monotonic() - started < 2
        # the header deadline closes connections that never sent a request's headers
        idle[0].settimeout(CLIENT_TIMEOUT_S + 10)
        idle[1].settimeout(CLIENT_TIMEOUT_S + 10)
        assert idle[0].recv(1) == b"" and idle[1].recv(1) == b""
    finally:
        for sock in idle:
            sock.close()


def test_a_burst_at_zero_replicas_is_served_or_told_to_retry(hardened):
    hardened.wait_for(
        lambda: next(f for f in hardened.status("hardened").functions if f.name == "burst").replicas.running == 0,
        timeout=60,
        what="burst at zero replicas",
    )

    def call(i: int) -> tuple[int, str | None, int | None]:
        r = requests.post(f"{hardened.url}/hardened/burst", json={"x": i}, timeout=300)
        return r.status_code, r.headers.get("retry-after"), r.json() if r.status_code == 200 else None

    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(call, range(200)))
    statuses = [s for s, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert all(retry == str(constants.RETRY_AFTER_S) for s, retry, _ in answers if s == 503)
    assert all(value == i for i, (s, _, value) in enumerate(answers) if s == 200)
    assert statuses.count(200) >= 2 * 2 + 10, statuses.count(200)  # max_containers x max_inputs + max_queue


def test_a_sync_call_past_its_timeout_gets_its_replica_replaced(hardened):
    first = hardened.post("/hardened/stall", {"seconds": 0.01})
    assert first.status_code == 200
    r = hardened.post("/hardened/stall", {"seconds": 8})
    assert r.status_code == 504 and error_of(r)["type"] == "Timeout"
    after = hardened.post("/hardened/stall", {"seconds": 0.01}, timeout=120)
    assert after.status_code == 200, after.text
    assert after.json()["pid"] != first.json()["pid"]  # a fresh replica, not the one whose thread hangs
    again = hardened.post("/hardened/stall", {"seconds": 0.01})
    assert again.status_code == 200 and again.json()["pid"] == after.json()["pid"]


def test_the_gateway_answers_json_errors_for_bad_requests(hardened):
    r = requests.put(f"{hardened.url}/hardened/total", data=b"{}", timeout=30)
    assert r.status_code == 405 and error_of(r)["type"] == "MethodNotAllowed"
    with socket.create_connection(
        tuple(hardened.url.removeprefix("http://").split(":")[:1]) + (int(hardened.url.rsplit(":", 1)[1]),)
    ) as sock:
        sock.sendall(b"POST /hardened/total HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}")
        sock.settimeout(CLIENT_TIMEOUT_S + 15)
        answer = b""
        while chunk := sock.recv(65536):  # the gateway closes the connection after the 408
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"RequestTimeout" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "RequestTimeout"


def test_deployed_code_cannot_change_the_control_plane_or_forge_a_bill(hardened):
    import ray

    from raygpu.sdk.control import meter, store

    hardened.deploy(APPS / "intruder.py")
    r = hardened.post("/intruder/attempt", {"victim": "hardened"})
    assert r.status_code == 200, r.text
    outcomes = r.json()
    for name in ("create_token", "delete_app", "set_protected", "set_setting"):
        assert outcomes[name].startswith("refused") and "admin credential" in outcomes[name], outcomes
    assert outcomes["meter_accepted"] == 0 and outcomes["admin_key_in_env"] is False
    assert "hardened" in [a["name"] for a in ray.get(store().live_apps.remote())]
    assert ray.get(store().get_setting.remote("gateway_url")) == hardened.url
    assert ray.get(meter().intervals.remote("nobody")) == []
    assert ray.get(meter().ping.remote())["rejected"] >= 1
    hardened.cli("stop", "intruder")
