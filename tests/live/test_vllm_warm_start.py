"""A vLLM replica from zero on a warm worker of the vllm flavour: the worker had vLLM imported and an
engine-core process ready, the replica's image sets only environment variables (it still lands
warm), and its start is reported by phase, engine phases and first token included. Its image also
forces the CPU fallback (RAYGPU_CPU_CAPS=amx=0), so the engine runs in float32 on any host. Its
engine is then killed by a signal: the calls it was running answer 503 EngineDied (a stream ends
with an EngineDied event), Serve replaces the replica, and the replacement, a later replica on the
node, loads the weights the first one staged in node memory."""

import json
from pathlib import Path

import pytest
import ray
import requests

pytestmark = pytest.mark.slow

APP_SOURCE = """
import raygpu

app = raygpu.App("warmllm")
raygpu.vllm(
    app,
    "tiny",
    model={model!r},
    served_model_name="tiny",
    engine_args={{"enforce_eager": True, "distributed_executor_backend": "uni", "max_model_len": 256,
                  "kv_cache_memory_bytes": 64 << 20, "seed": 0}},
    gpu=1,
    scaledown_window=60,
    timeout=300,
    image=raygpu.Image(env={{"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                             "RAYGPU_CPU_CAPS": "amx=0"}}),
)
"""


def head_pool():
    from deployments import constants
    from deployments.node.warm_pool import pool_actor_name

    head = next(n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])
    return ray.get_actor(pool_actor_name(head["NodeID"]), namespace=constants.RAY_NAMESPACE)


def idle_vllm_workers() -> int:
    stats = ray.get(head_pool().stats.remote())
    return len(stats["flavours"].get("vllm", {}).get("idle", []))


@pytest.fixture(scope="module")
def warm_llm(cluster, tmp_path_factory):
    from raygpu.sdk.testing import build_tiny_llama

    pool = head_pool()
    ray.get(pool.resize.remote({"vllm": 1}))
    try:
        model = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
        app_file = tmp_path_factory.mktemp("warmllm") / "warmllm.py"
        app_file.write_text(APP_SOURCE.format(model=str(model)))
        cluster.deploy(app_file)
        cluster.model = str(model)
        yield cluster
    finally:
        cluster.cli("stop", "warmllm")
        ray.get(pool.resize.remote({"vllm": 0}))  # its idle workers (and their engine cores) stop


def test_a_vllm_replica_from_zero_starts_on_a_warm_vllm_worker_with_a_warm_engine_core(warm_llm):
    cluster = warm_llm
    cluster.wait_for(lambda: idle_vllm_workers() >= 1, timeout=300, interval=1.0, what="an idle vllm warm worker")
    with requests.post(
        f"{cluster.url}/warmllm/tiny/v1/completions",
        json={"model": "tiny", "prompt": "def main(", "max_tokens": 4, "stream": True},
        stream=True,
        timeout=300,
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]" and json.loads(lines[0].removeprefix(b"data: "))["choices"]

    def phases():
        status = cluster.status("warmllm")
        found = next(f.last_start_phases for f in status.functions if f.name == "tiny")
        return found if "first_response" in found else None

    found = cluster.wait_for(phases, timeout=60, what="the replica's start phases")
    # engine phases come only from a warm engine-core process: the replica was handed one
    for phase in ("imports", "engine_process", "weights", "kv_cache", "warmup", "engine_init", "ready", "first_token"):
        assert phase in found, found
    # the override forced the fallback: float32 on the vector kernels, and the replica says why
    info = tiny_engine_info()
    assert info["dtype"] == "float32" and "RAYGPU_CPU_CAPS" in info["dtype_note"], info


def tiny_handle():
    from ray import serve

    from raygpu.sdk.control import store

    entry = next(a for a in ray.get(store().live_apps.remote()) if a["name"] == "warmllm")
    return serve.get_deployment_handle("tiny", app_name=entry["functions"][0]["serve_app"])


def tiny_engine_info(handle=None) -> dict:
    """The replica's engine counters (through `handle`, or one opened for this call)."""
    own = handle is None
    handle = handle or tiny_handle()
    try:
        return handle.engine_info.remote().result(timeout_s=60)
    finally:
        if own:
            handle.shutdown()


def test_an_engine_killed_by_a_signal_answers_503_engine_died_and_its_replacement_loads_the_staged_weights(
    warm_llm,
):
    import os
    import signal
    import threading

    from deployments.engines.model_stage import stage_root, staged_path

    cluster = warm_llm
    url = f"{cluster.url}/warmllm/tiny/v1/completions"
    completion = {"model": "tiny", "prompt": "def main(", "max_tokens": 2}
    assert cluster.post("/warmllm/tiny/v1/completions", completion, timeout=300).status_code == 200
    staged = cluster.wait_for(lambda: staged_path(cluster.model, stage_root()), timeout=60, what="the weights staged")
    assert (staged / "model.safetensors").stat().st_size == (Path(cluster.model) / "model.safetensors").stat().st_size

    answers: dict[str, object] = {}

    def plain() -> None:
        answers["plain"] = requests.post(url, json={"model": "tiny", "prompt": "a", "max_tokens": 8}, timeout=120)

    def streamed() -> None:
        body = {"model": "tiny", "prompt": "b", "max_tokens": 8, "stream": True}
        with requests.post(url, json=body, stream=True, timeout=120) as response:
            answers["stream"] = (response.status_code, [line for line in response.iter_lines() if line])

    handle = tiny_handle()
    try:
        before = tiny_engine_info(handle)
        (core,) = before["engine_core_pids"]
        os.kill(core, signal.SIGSTOP)  # the engine takes both calls and runs neither
        try:
            callers = [threading.Thread(target=plain), threading.Thread(target=streamed)]
            for caller in callers:
                caller.start()
            cluster.wait_for(
                lambda: tiny_engine_info(handle)["unfinished_requests"] >= 2,
                timeout=60,
                interval=0.05,
                what="two calls",
            )
            os.kill(core, signal.SIGILL)  # delivered when it runs again: what an AMX trap does
        finally:
            os.kill(core, signal.SIGCONT)
        for caller in callers:
            caller.join(timeout=120)
        plain_answer = answers["plain"]
        assert plain_answer.status_code == 503, plain_answer.text
        error = plain_answer.json()["error"]
        assert error["type"] == "EngineDied" and "SIGILL" in error["message"] and "float32" in error["message"]
        status, lines = answers["stream"]
        assert status == 200 and lines[-1] == b"data: [DONE]"
        died = [line for line in lines if b"EngineDied" in line]
        assert died and b"SIGILL" in died[-1], lines

        def replaced() -> bool:
            try:
                info = tiny_engine_info(handle)
            except TimeoutError:  # no replica yet: the replacement is starting
                return False
            return info["pid"] != before["pid"] and info["engine_died"] is None

        # Serve replaces the replica whose engine died
        cluster.wait_for(replaced, timeout=300, interval=1.0, what="a replacement replica")
    finally:
        handle.shutdown()
    models = requests.get(f"{cluster.url}/warmllm/tiny/v1/models", timeout=300)
    assert models.status_code == 200, models.text
    (card,) = models.json()["data"]
    # the replacement's engine loaded the staged copy; clients still name the model as deployed
    assert card["id"] == "tiny" and card["root"] == str(staged), card
    assert cluster.post("/warmllm/tiny/v1/completions", completion, timeout=300).json()["choices"]
