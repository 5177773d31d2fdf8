"""What an outside caller can no longer do to the cluster: hold the store with long polls, fill it
with spawned-call bytes, buy cold starts with cancels, or stall a gateway replica with bodies
that are expensive to parse."""

import asyncio
import concurrent.futures
import json
import threading
import time

import pytest
import requests
from conftest import APPS

from deployments.calls.cancels import DEFAULT_CANCEL_GRACE_S
from deployments.calls.records import DEFAULT_CALL_STORAGE_PER_APP
from raygpu.sdk.control import admin_call


@pytest.fixture(scope="module")
def outside(cluster):
    cluster.deploy(APPS / "outside.py")
    cluster.deploy(APPS / "elsewhere.py")  # never called before the waiters test: at zero replicas
    tokens = [json.loads(cluster.cli("token", "create", "outside", "--json").stdout) for _ in range(2)]
    return cluster, [{"Authorization": f"Bearer {t['token']}"} for t in tokens], tokens


def spawn(cluster, headers, path: str, body: bytes) -> requests.Response:
    return requests.post(
        f"{cluster.url}/outside/{path}/spawn",
        data=body,
        headers={**headers, "Content-Type": "application/json"},
        timeout=60,
    )


def running(cluster, headers, call_id: str) -> bool:
    r = requests.get(f"{cluster.url}/outside/calls/{call_id}", headers=headers, timeout=30)
    return r.json()["status"] == "running"


async def hold_waiters(host: str, port: int, path: str, token: str, n: int) -> list[asyncio.StreamReader]:
    """Open `n` connections that each wait on `path`; the readers of their answers."""
    readers = []
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        readers.append((reader, writer))
    return readers


async def status_of(reader: asyncio.StreamReader, timeout: float) -> int:
    line = await asyncio.wait_for(reader.readline(), timeout)
    return int(line.split()[1])


def test_eleven_hundred_waiters_do_not_hold_the_store(outside):
    cluster, (caller, revoked), tokens = outside
    host, port = cluster.url.removeprefix("http://").split(":")
    long_call = spawn(cluster, caller, "slow", b'{"seconds": 20}').json()["call_id"]
    path = f"/outside/calls/{long_call}?wait=60"
    token = caller["Authorization"].split()[1]

    async def scenario():
        held = await hold_waiters(host, int(port), path, token, 1100)
        try:
            # waiters past the per-app bound of a replica are told to come back; the rest wait
            early = await asyncio.gather(*(status_of(r, 2.0) for r, _ in held), return_exceptions=True)
            answered = [s for s in early if isinstance(s, int)]
            assert set(answered) <= {503}, answered
            assert len(answered) < 1100, "no caller was let wait"
            # the store still serves the control plane: a revoked token stops working within a second
            assert requests.post(f"{cluster.url}/outside/total", json={"values": [1]}, headers=revoked).ok
            out = await asyncio.to_thread(cluster.cli, "token", "revoke", "outside", tokens[1]["id"])
            assert out.returncode == 0, out.stderr
            revoked_at = time.monotonic()
            while requests.post(f"{cluster.url}/outside/total", json={"values": [1]}, headers=revoked).ok:
                assert time.monotonic() - revoked_at < 1.0, "the revocation was not in force within a second"
                await asyncio.sleep(0.05)
            # and a cold call to another app (at zero replicas) answers
            assert cluster.status("elsewhere").functions[0].replicas.running == 0
            cold = await asyncio.to_thread(requests.post, f"{cluster.url}/elsewhere/ping", json={"x": 2}, timeout=60)
            assert cold.status_code == 200 and cold.json() == 3
            # a cancel wakes every waiter with the record
            cancelled = requests.delete(f"{cluster.url}/outside/calls/{long_call}", headers=caller, timeout=30)
            assert cancelled.status_code == 200
            waiting = [r for (r, _), s in zip(held, early) if not isinstance(s, int)]
            woken = await asyncio.gather(*(status_of(r, 10.0) for r in waiting))
            assert set(woken) == {200}
        finally:
            for _, writer in held:
                writer.close()

    asyncio.run(scenario())


def test_spawned_calls_are_bounded_in_bytes_per_app(outside):
    cluster, (caller, _), _ = outside
    admin_call("set_setting", "call_storage_per_app", 4 * 2**20)
    try:
        values = json.dumps({"values": [0.5] * 300_000}).encode()  # ~1.5 MiB
        first = spawn(cluster, caller, "total", values)
        assert first.status_code == 202, first.text
        second = spawn(cluster, caller, "total", values)
        assert second.status_code == 202, second.text
        full = spawn(cluster, caller, "total", values)
        assert full.status_code == 507 and full.json()["error"]["type"] == "CallStorageFull"
        assert "--call-storage-per-app" in full.json()["error"]["message"]
        huge = spawn(cluster, caller, "total", json.dumps({"values": [0.5] * 900_000}).encode())
        assert huge.status_code == 413 and huge.json()["error"]["type"] == "PayloadTooLarge"
        # the kept call ran on its arguments, passed on as text
        done = requests.get(
            f"{cluster.url}/outside/calls/{first.json()['call_id']}?wait=60", headers=caller, timeout=90
        ).json()
        assert done["status"] == "succeeded" and done["result"] == 150_000.0
    finally:
        admin_call("set_setting", "call_storage_per_app", DEFAULT_CALL_STORAGE_PER_APP)


def test_twenty_cancels_of_running_sync_calls_replace_no_replica(outside):
    cluster, (caller, _), _ = outside
    ids = [spawn(cluster, caller, "slow", b'{"seconds": 3}').json()["call_id"] for _ in range(20)]
    cluster.wait_for(lambda: any(running(cluster, caller, i) for i in ids), timeout=60, what="a call to run")
    answers = [requests.delete(f"{cluster.url}/outside/calls/{i}", headers=caller, timeout=30) for i in ids]
    assert all(a.status_code in (200, 409) for a in answers)
    assert sum(a.status_code == 200 for a in answers) >= 18
    slow = next(f for f in cluster.status("outside").functions if f.name == "slow")
    cluster.wait_for(
        lambda: next(f for f in cluster.status("outside").functions if f.name == "slow").cancels,
        timeout=30,
        what="the cancels in status",
    )
    slow = next(f for f in cluster.status("outside").functions if f.name == "slow")
    assert slow.cancels["replaced_last_hour"] == 0 and slow.cancels["finished_after_cancel"] >= 1
    assert slow.cancels["grace_s"] == DEFAULT_CANCEL_GRACE_S
    out = cluster.cli("status", "outside")
    assert "cancelled sync calls replaced 0 replicas" in out.stdout
    # the replicas finish their calls and take the next ones
    r = requests.post(f"{cluster.url}/outside/slow", json={"seconds": 0}, headers=caller, timeout=60)
    assert r.status_code == 200


def test_expensive_bodies_do_not_stall_the_gateway(outside):
    cluster, (caller, _), _ = outside
    nested = b'{"values": ' + b"[" + b"[]," * (16 * 2**20 // 3 - 10) + b"[]]}"
    floats = json.dumps({"values": [0.25] * 400_000}).encode()  # parsed in a body-check worker
    latencies: list[float] = []
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            started = time.monotonic()
            requests.get(f"{cluster.url}/healthz", timeout=5)
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)

    def post(body: bytes) -> requests.Response:
        return requests.post(
            f"{cluster.url}/outside/total",
            data=body,
            headers={**caller, "Content-Type": "application/json"},
            timeout=120,
        )

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            refused = list(pool.map(post, [nested] * 8))
            summed = list(pool.map(post, [floats] * 4))
    finally:
        stop.set()
        prober.join()
    assert {r.status_code for r in refused} == {400}
    assert refused[0].json()["error"]["type"] == "BodyTooComplex"
    assert all(r.status_code == 200 and r.json() == 100_000.0 for r in summed), [r.text[:200] for r in summed]
    assert latencies and max(latencies) < 0.5, f"/healthz took up to {max(latencies):.2f} s"


def test_a_protected_apps_call_records_open_only_to_its_token_or_the_admin_credential(outside):
    from raygpu.sdk.admin import admin_key

    cluster, (caller, _), _ = outside
    call_id = spawn(cluster, caller, "slow", b'{"seconds": 30}').json()["call_id"]
    url = f"{cluster.url}/outside/calls/{call_id}"
    for headers in ({}, {"Authorization": "Bearer rga_" + "x" * 40}, {"Authorization": "Bearer nope"}):
        assert requests.get(url, headers=headers, timeout=30).status_code == 401
        assert requests.delete(url, headers=headers, timeout=30).status_code == 401
    admin = {"Authorization": f"Bearer {admin_key()}"}
    assert requests.get(url, headers=admin, timeout=30).json()["call_id"] == call_id
    assert requests.delete(url, headers=admin, timeout=30).json()["status"] == "cancelled"
    assert requests.get(url, headers=caller, timeout=30).json()["status"] == "cancelled"
    # the admin credential opens call records only, not the app's functions
    assert (
        requests.post(f"{cluster.url}/outside/total", json={"values": [1]}, headers=admin, timeout=30).status_code
        == 401
    )
