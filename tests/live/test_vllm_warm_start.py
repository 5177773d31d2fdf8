"""A vLLM replica from zero on a warm worker of the vllm flavour: the worker had vLLM imported and an
engine-core process ready, the replica's image sets only environment variables (it still lands
warm), and its start is reported by phase, engine phases and first token included. Its image also
forces the CPU fallback (RAYGPU_CPU_CAPS=amx=0), so the engine runs in float32 on any host."""

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
    scaledown_window=2,
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


def tiny_engine_info() -> dict:
    from ray import serve

    from raygpu.sdk.control import store

    entry = next(a for a in ray.get(store().live_apps.remote()) if a["name"] == "warmllm")
    handle = serve.get_deployment_handle("tiny", app_name=entry["functions"][0]["serve_app"])
    try:
        return handle.engine_info.remote().result(timeout_s=60)
    finally:
        handle.shutdown()


def test_a_later_replica_on_the_node_loads_the_weights_the_first_staged_in_node_memory(warm_llm):
    from deployments.engines.model_stage import stage_root, staged_path

    cluster = warm_llm
    completion = {"model": "tiny", "prompt": "def main(", "max_tokens": 2}
    assert cluster.post("/warmllm/tiny/v1/completions", completion, timeout=300).status_code == 200
    root = stage_root()
    staged = cluster.wait_for(lambda: staged_path(cluster.model, root), timeout=60, what="the weights staged")
    assert (staged / "model.safetensors").stat().st_size == (Path(cluster.model) / "model.safetensors").stat().st_size
    cluster.wait_for(
        lambda: next(f for f in cluster.status("warmllm").functions if f.name == "tiny").replicas.running == 0,
        timeout=120,
        what="scale to zero",
    )
    models = requests.get(f"{cluster.url}/warmllm/tiny/v1/models", timeout=300)
    assert models.status_code == 200, models.text
    (card,) = models.json()["data"]
    # the engine of the new replica loaded the staged copy; clients still name the model as deployed
    assert card["id"] == "tiny" and card["root"] == str(staged), card
    assert cluster.post("/warmllm/tiny/v1/completions", completion, timeout=300).json()["choices"]
