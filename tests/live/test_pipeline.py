"""Pipelines on the real cluster: HTTP -> stage_a -> stage_b -> stage_c through the call core over
Serve handles, one call id through every stage (`raygpu calls show`), each stage on its own bill,
a callee's full queue as the HTTP caller's 503, a stage's replica killed mid-call and the call
resent, and a retry policy's runs counted."""

import json
import os
import signal
import threading

import pytest
import requests
from conftest import APPS

import raygpu
from raygpu.sdk.admin import admin_key


@pytest.fixture(scope="module")
def pipeline(cluster):
    cluster.deploy(APPS / "pipeline.py")
    return cluster


def stages_of(cluster, call_id: str, count: int) -> list[dict]:
    """The recorded stages of a call once `count` are in (replicas report each second)."""
    headers = {"Authorization": f"Bearer {admin_key()}"}

    def recorded():
        r = requests.post(
            f"{cluster.url}/_raygpu/admin/call_show", json={"call_id": call_id}, headers=headers, timeout=30
        )
        if r.status_code == 200 and len(r.json()["result"]["stages"]) >= count:
            return r.json()["result"]["stages"]
        assert r.status_code in (200, 404), r.text
        return None

    return cluster.wait_for(recorded, timeout=30, what=f"{count} stages of {call_id}")


def test_a_three_stage_pipeline_answers_under_one_call_id_and_bills_each_stage(pipeline):
    r = pipeline.post("/pipeline/stage_a", {"text": " hi "}, headers={"x-raygpu-call-id": "order-17"})
    assert r.status_code == 200, r.text
    assert r.headers["x-raygpu-call-id"] == "order-17" and r.headers["x-raygpu-attempts"] == "1"
    body = r.json()
    assert body["text"] == "<HI>" and body["a"] == body["b"] == body["c"] == "order-17"
    stages = stages_of(pipeline, "order-17", 3)
    assert [s["function"] for s in stages] == ["stage_a", "stage_b", "stage_c"]
    assert all(s["status"] == 200 and s["app"] == "pipeline" and s["duration_s"] >= 0 for s in stages)
    a, b, c = stages
    assert a["started_at"] <= b["started_at"] <= c["started_at"]
    assert c["started_at"] + c["duration_s"] <= a["started_at"] + a["duration_s"] + 0.01
    # the CLI lists them too (as a Ray driver); an id nothing ran under is a clean failure
    out = pipeline.cli("calls", "show", "order-17", "--json")
    assert out.returncode == 0, out.stderr
    assert [s["function"] for s in json.loads(out.stdout)["stages"]] == ["stage_a", "stage_b", "stage_c"]
    missing = pipeline.cli("calls", "show", "never-ran")
    assert missing.returncode == 1 and "no call 'never-ran'" in missing.stderr
    assert pipeline.post("/pipeline/stage_a", {"text": "x"}, headers={"x-raygpu-call-id": "bad id!"}).status_code == 400
    # a generated id when the caller sends none
    r = pipeline.post("/pipeline/stage_a", {"text": "y"})
    assert r.status_code == 200 and r.json()["c"] == r.headers["x-raygpu-call-id"]

    def bill_lines():
        out = pipeline.cli("bill", "pipeline", "--json")
        assert out.returncode == 0, out.stderr
        lines = {line["function"]: line for line in json.loads(out.stdout)["lines"]}
        if all(
            float(lines.get(f, {}).get("gpu_seconds", {}).get("active", 0)) > 0
            for f in ("stage_a", "stage_b", "stage_c")
        ):
            return lines
        return None

    pipeline.wait_for(bill_lines, timeout=30, interval=1, what="each stage's active GPU-seconds on its own bill line")


def test_a_callees_full_queue_is_the_http_callers_503_with_retry_after(pipeline):
    r = pipeline.post("/pipeline/crowd", {"calls": 3})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "QueueFull" and r.headers["Retry-After"]
    # from Python the same failure is the same exception
    with pytest.raises(raygpu.QueueFull) as raised:
        raygpu.lookup("pipeline", "crowd").remote(calls=3)
    assert raised.value.status == 503 and raised.value.retry_after >= 1


def test_a_stage_whose_replica_is_killed_mid_call_is_resent_and_answers(pipeline, tmp_path):
    pid_file = tmp_path / "stage_c.pid"
    answer = {}

    def call():
        answer["response"] = pipeline.post(
            "/pipeline/stage_a", {"text": "kill", "pid_file": str(pid_file), "hold_s": 30}, timeout=180
        )

    caller = threading.Thread(target=call)
    caller.start()
    pid = int(pipeline.wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=60, what="stage_c's pid"))
    os.kill(pid, signal.SIGKILL)
    caller.join(timeout=180)
    r = answer["response"]
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "<KILL>" and r.json()["pid"] != pid


def test_a_function_that_raises_twice_answers_on_its_third_run_under_its_retry_policy(pipeline, tmp_path):
    r = pipeline.post("/pipeline/flaky", {"marker": str(tmp_path / "runs")})
    assert r.status_code == 200, r.text
    assert r.headers["x-raygpu-attempts"] == "3" and r.json()["runs"] == 3
    stages = stages_of(pipeline, r.headers["x-raygpu-call-id"], 3)
    assert [(s["attempt"], s["status"]) for s in stages] == [(1, 500), (2, 500), (3, 200)]
    # out of runs: the last failure, as the function's own error, with its type
    r = pipeline.post("/pipeline/flaky", {"marker": str(tmp_path / "more"), "failures": 5})
    assert r.status_code == 500 and r.headers["x-raygpu-attempts"] == "3"
    assert r.json()["error"] == {"type": "RuntimeError", "message": "run 3 fails"}
    with pytest.raises(raygpu.RemoteError) as raised:
        raygpu.lookup("pipeline", "flaky").remote(marker=str(tmp_path / "py"), failures=5)
    assert raised.value.remote_type == "RuntimeError"
    # a spawned call lists its runs
    call = raygpu.lookup("pipeline", "flaky").spawn(marker=str(tmp_path / "spawned"))
    assert call.get(timeout=60)["runs"] == 3
    record = requests.get(f"{pipeline.url}/pipeline/calls/{call.call_id}", timeout=30).json()
    assert [a["status"] for a in record["attempts"]] == [500, 500, 200]
