"""Spawned calls on the real cluster: 202 and a call id at once, polled and waited on over HTTP and
from Python, cancelled, kept across gateway and runner restarts, and reported to a webhook
(signed, retried, refused for private addresses that `--callback-allow` does not allow)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from conftest import APPS
from standardwebhooks import Webhook

import raygpu
from deployments.calls.callbacks import SIGNATURE_HEADER, verify
from deployments.calls.cancels import DEFAULT_CANCEL_GRACE_S
from raygpu.sdk.control import admin_call
from raygpu.sdk.errors import RemoteCallError


@pytest.fixture(scope="module")
def spawned(cluster):
    return cluster.deployed_app(APPS / "spawned.py")


def spawn(cluster, path: str, body: dict, headers: dict | None = None) -> str:
    r = requests.post(f"{cluster.url}/spawned/{path}/spawn", json=body, headers=headers or {}, timeout=30)
    assert r.status_code == 202, r.text
    call_id = r.json()["call_id"]
    assert r.headers["location"] == f"/spawned/calls/{call_id}"
    return call_id


def record(cluster, call_id: str, wait: float | None = None) -> dict:
    params = {"wait": wait} if wait is not None else {}
    r = requests.get(f"{cluster.url}/spawned/calls/{call_id}", params=params, timeout=90)
    assert r.status_code == 200, r.text
    return r.json()


def test_spawn_answers_at_once_and_the_record_is_polled_and_waited_on(cluster, spawned):
    call_id = spawn(cluster, "slow_add", {"a": 1, "b": 2, "seconds": 2})
    first = record(cluster, call_id)
    assert first["status"] in ("pending", "running"), "spawn answered only after the call"
    assert first["function"] == "slow_add"
    done = record(cluster, call_id, wait=60)
    assert done["status"] == "succeeded" and done["result"] == 3 and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]

    failed = record(cluster, spawn(cluster, "explode", {"message": "kaboom"}), wait=60)
    assert failed["status"] == "failed" and failed["error"]["type"] == "RuntimeError"
    assert failed["error"]["message"] == "kaboom" and failed["result"] is None
    bad_args = record(cluster, spawn(cluster, "slow_add", {"a": "x"}), wait=60)
    assert bad_args["status"] == "failed" and bad_args["error"]["type"] == "ValidationError"
    method = record(cluster, spawn(cluster, "Doubler/twice", {"x": 21}), wait=60)
    assert method["status"] == "succeeded" and method["result"] == 42 and method["function"] == "Doubler.twice"


def test_spawn_and_poll_refuse_what_they_cannot_do(cluster, spawned):
    url = cluster.url
    assert requests.get(f"{url}/spawned/calls/fc-{'a' * 22}", timeout=30).status_code == 404
    assert requests.get(f"{url}/spawned/calls/not-an-id", timeout=30).status_code == 404
    assert requests.get(f"{url}/spawned/calls", timeout=30).status_code == 404
    call_id = spawn(cluster, "Doubler/twice", {"x": 1})
    assert requests.put(f"{url}/spawned/calls/{call_id}", timeout=30).status_code == 405
    r = requests.get(f"{url}/spawned/calls/{call_id}", params={"wait": "soon"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "InvalidWait"
    r = requests.get(f"{url}/spawned/slow_add/spawn", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = requests.post(f"{url}/spawned/numbers/spawn", json={"n": 2}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "GeneratorFunction"
    r = requests.post(f"{url}/spawned/slow_add/spawn", data=b"[1, 2]", timeout=30)
    assert r.status_code == 400
    r = requests.post(f"{url}/spawned/nothing/spawn", json={}, timeout=30)
    assert r.status_code == 404
    # a call id of one app is not found under another
    cluster.deploy(APPS / "basic.py")
    assert requests.get(f"{url}/basic/calls/{call_id}", timeout=30).status_code == 404


def test_spawn_from_python_get_from_id_and_timeout(cluster, spawned):
    call = raygpu.lookup("spawned", "slow_add").spawn(2, 3, seconds=1)
    assert isinstance(call, raygpu.FunctionCall) and call.call_id.startswith("fc-")
    with pytest.raises(TimeoutError):
        call.get(timeout=0.1)
    assert raygpu.FunctionCall.from_id(call.call_id).get(timeout=60) == 5
    assert spawned.functions["slow_add"].spawn(a=4, b=4).get(timeout=60) == 8
    assert raygpu.lookup("spawned", "Doubler").twice.spawn(5).get(timeout=60) == 10
    with pytest.raises(RemoteCallError, match="boom") as failure:
        raygpu.lookup("spawned", "explode").spawn("boom").get(timeout=60)
    assert failure.value.error_type == "RuntimeError"
    with pytest.raises(raygpu.NotFoundError):
        raygpu.FunctionCall.from_id(f"fc-{'b' * 22}")
    with pytest.raises(RemoteCallError, match="yields its results"):
        raygpu.lookup("spawned", "numbers").spawn(3)
    with pytest.raises(TypeError, match="JSON values"):
        raygpu.lookup("spawned", "slow_add").spawn(object(), 1)


def wait_running(cluster, call_id: str) -> None:
    cluster.wait_for(lambda: record(cluster, call_id)["status"] == "running", timeout=60, what="the call to run")


def test_cancel_a_running_call_over_http_and_from_python(cluster, spawned):
    # past the grace (0 here), a cancelled sync call's replica is replaced, within the hourly limit
    admin_call("set_setting", "cancel_grace_s", 0.0)
    try:
        call_id = spawn(cluster, "slow_add", {"a": 1, "b": 1, "seconds": 60})
        wait_running(cluster, call_id)
        r = requests.delete(f"{cluster.url}/spawned/calls/{call_id}", timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        again = requests.delete(f"{cluster.url}/spawned/calls/{call_id}", timeout=30)
        assert again.status_code == 409 and again.json()["error"]["type"] == "CallFinished"
        assert record(cluster, call_id)["error"]["type"] == "Cancelled"
        # the replica whose thread ran it is replaced; the function keeps answering
        assert raygpu.lookup("spawned", "slow_add").remote(1, 1) == 2

        call = raygpu.lookup("spawned", "slow_add").spawn(1, 2, seconds=60)
        wait_running(cluster, call.call_id)
        assert call.cancel() is True
        with pytest.raises(RemoteCallError) as cancelled:
            call.get(timeout=30)
        assert cancelled.value.error_type == "Cancelled"
        assert call.cancel() is False
        assert raygpu.lookup("spawned", "slow_add").remote(2, 2) == 4
        # each cancel that reached a running replica replaced it (a call cancelled while its replica
        # was still starting never ran there)
        slow_add = next(f for f in cluster.status("spawned").functions if f.name == "slow_add")
        assert 1 <= slow_add.cancels["replaced_last_hour"] <= 2 and slow_add.cancels["grace_s"] == 0
    finally:
        admin_call("set_setting", "cancel_grace_s", DEFAULT_CANCEL_GRACE_S)


class Receiver:
    """A webhook receiver on loopback: records each delivery, answers 500 to the first `fail_first`."""

    def __init__(self, fail_first: int = 0):
        self.deliveries: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.deliveries.append((dict(self.headers.items()), body))
                status = 500 if len(receiver.deliveries) <= receiver.fail_first else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_a_webhook_receives_the_signed_final_record_retried_until_it_takes_it(cluster, spawned):
    receiver = Receiver(fail_first=1)
    try:
        call_id = spawn(cluster, "slow_add", {"a": 20, "b": 22}, headers={"x-raygpu-callback": receiver.url})
        cluster.wait_for(lambda: len(receiver.deliveries) >= 2, timeout=60, what="the webhook's retry")
        headers, body = receiver.deliveries[-1]
        delivered = json.loads(body)
        assert delivered["call_id"] == call_id and delivered["status"] == "succeeded" and delivered["result"] == 42
        secret = cluster.cli("token", "secret", "spawned")
        assert secret.returncode == 0, secret.stderr
        lowered = {k.lower(): v for k, v in headers.items()}
        assert verify(secret.stdout.strip(), body, lowered[SIGNATURE_HEADER])
        assert not verify(secret.stdout.strip(), body + b" ", lowered[SIGNATURE_HEADER])
        # the Standard Webhooks signature verifies with the standardwebhooks package; one id per call
        assert Webhook(secret.stdout.strip()).verify(body, lowered)["call_id"] == call_id
        ids = {{k.lower(): v for k, v in delivery.items()}["webhook-id"] for delivery, _ in receiver.deliveries}
        assert ids == {call_id}
        # nothing but the admin reads the key the secrets derive from
        import ray

        from deployments.store.actor import get_store

        with pytest.raises(ray.exceptions.RayTaskError, match="admin credential"):
            ray.get(get_store().get_setting.remote("webhook_signing_key"))

        def delivered_state():
            callback = record(cluster, call_id)["callback"]
            return callback if callback["delivered"] else None

        callback = cluster.wait_for(delivered_state, timeout=30, what="the delivery in the record")
        assert [a["status"] for a in callback["attempts"]] == [500, 200] and callback["url"] == receiver.url
    finally:
        receiver.close()


def test_callbacks_to_private_addresses_are_refused_unless_allowed(cluster, spawned):
    for url in (
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest",
        "http://100.100.100.200/latest/meta-data",  # shared address space: a cloud metadata service
        "http://[::1]:9/x",
        "http://[fec0::1]/x",
        "ftp://example.com/x",
    ):
        r = requests.post(
            f"{cluster.url}/spawned/slow_add/spawn",
            json={"a": 1, "b": 1},
            headers={"x-raygpu-callback": url},
            timeout=30,
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "CallbackRefused", url
    assert "--callback-allow" in r.json()["error"]["message"] or "http(s)" in r.json()["error"]["message"]


def test_records_survive_a_gateway_restart_and_a_restarted_runner_finishes_open_calls(cluster, spawned):
    import ray

    from deployments import constants
    from deployments.calls.runner import get_call_runner

    done_id = spawn(cluster, "slow_add", {"a": 3, "b": 4})
    assert record(cluster, done_id, wait=60)["status"] == "succeeded"

    def gateways() -> dict[str, dict]:
        return {
            a["ActorID"]: a
            for a in ray._private.state.actors().values()
            if a["ActorClassName"].startswith(f"ServeReplica:{constants.GATEWAY_APP_NAME}")
        }

    killed = {i for i, a in gateways().items() if a["State"] == "ALIVE"}
    assert killed
    for actor_id in killed:
        ray.kill(ray.get_actor(gateways()[actor_id]["Name"], namespace="serve"), no_restart=True)

    def replaced_and_healthy():
        now = gateways()
        if any(now[i]["State"] != "DEAD" for i in killed):
            return False
        if not any(a["State"] == "ALIVE" for i, a in now.items() if i not in killed):
            return False
        try:
            return requests.get(f"{cluster.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    cluster.wait_for(replaced_and_healthy, timeout=120, what="a new gateway replica")
    assert record(cluster, done_id)["result"] == 7

    open_id = spawn(cluster, "slow_add", {"a": 5, "b": 6, "seconds": 3})
    wait_running(cluster, open_id)
    ray.kill(get_call_runner(), no_restart=False)  # Ray restarts it; it takes the open call up again
    done = record(cluster, open_id, wait=60)
    if done["status"] != "succeeded":
        done = record(cluster, open_id, wait=60)
    assert done["status"] == "succeeded" and done["result"] == 11
