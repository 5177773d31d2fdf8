"""A warm vLLM engine-core process, live and without Ray: started ahead with vLLM imported, handed to
the next engine of this process (which answers as vLLM does), reporting its start phases in order;
and vLLM's own path when no warm process is ready."""

import asyncio
import json
import time

import pytest

pytestmark = pytest.mark.slow

ENGINE_ARGS = {
    "enforce_eager": True,
    "distributed_executor_backend": "uni",
    "max_model_len": 256,
    "kv_cache_memory_bytes": 64 << 20,
    "seed": 0,
}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from raygpu.sdk.testing import build_tiny_llama

    with pytest.MonkeyPatch.context() as patch:
        # the uni executor (no worker process of its own), as the test apps run it on CPU hosts
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        yield str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


async def start_and_complete(model: str) -> tuple[object, list[str]]:
    from deployments.engines.vllm_engine import VllmServer

    server = await VllmServer.start(model, "tiny", "generate", ENGINE_ARGS)
    body = json.dumps({"model": "tiny", "prompt": "def main(", "max_tokens": 4, "stream": True}).encode()
    chunks = []
    try:
        async for item in server.request("POST", "/v1/completions", b"", [("content-type", "application/json")], body):
            if isinstance(item, bytes):
                chunks.append(item.decode())
    finally:
        await server.close()
    return server, chunks


def test_the_pinned_vllm_has_what_the_hand_over_needs():
    from deployments.engines.vllm_warm_core import capability

    assert capability() == (True, "")


def test_a_warm_engine_core_is_handed_to_the_next_engine_and_reports_its_phases(tiny_llama):
    from deployments.engines.vllm_warm_core import ENGINE_PHASES, WarmCores

    cores = WarmCores()
    assert cores.prestart(1) == 1 and cores.prestart(1) == 0  # one is kept, not one per call
    deadline = time.monotonic() + 120
    while not cores.ready_count():
        assert time.monotonic() < deadline, "the warm engine core never finished importing vLLM"
        time.sleep(0.2)
    from deployments.engines import vllm_warm_core

    saved = vllm_warm_core.WARM_CORES
    vllm_warm_core.WARM_CORES = cores  # the engine module reads the process's set at start
    from deployments.engines import vllm_engine

    vllm_engine.WARM_CORES = cores
    try:
        assert cores.install()
        pid = cores._cores[0].process.pid
        server, chunks = asyncio.run(start_and_complete(tiny_llama))
    finally:
        vllm_warm_core.WARM_CORES = saved
        vllm_engine.WARM_CORES = saved
    assert len(cores.handed) == 1 and cores.handed[0].process.pid == pid and cores.fallbacks == 0
    assert any('"text"' in c for c in chunks) and chunks[-1].strip().endswith("[DONE]")
    phases = server.engine_phases
    assert list(phases) == list(ENGINE_PHASES), phases
    assert list(phases.values()) == sorted(phases.values())
    cores.handed[0].process.join(timeout=30)  # the engine closed: its process ends with it
    assert not cores.handed[0].process.is_alive()


def test_without_a_ready_warm_core_the_engine_starts_the_way_vllm_does(tiny_llama):
    from deployments.engines import vllm_engine, vllm_warm_core
    from deployments.engines.vllm_warm_core import WarmCores

    cores = WarmCores()
    assert cores.install()
    saved = vllm_warm_core.WARM_CORES
    vllm_engine.WARM_CORES = cores
    try:
        server, chunks = asyncio.run(start_and_complete(tiny_llama))
    finally:
        vllm_engine.WARM_CORES = saved
    assert cores.handed == [] and cores.fallbacks == 1
    assert any('"text"' in c for c in chunks) and server.engine_phases == {}


def test_a_warm_engine_core_exits_when_the_process_that_started_it_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import psutil

    script = tmp_path / "starter.py"
    script.write_text(
        "import sys, time\n"
        "from deployments.engines.vllm_warm_core import WarmCore\n"
        "if __name__ == '__main__':\n"
        "    core = WarmCore(modules=())\n"
        "    print(core.process.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    starter = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        warm_pid = int(starter.stdout.readline())
        assert psutil.pid_exists(warm_pid)
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    deadline = time.monotonic() + 15
    while psutil.pid_exists(warm_pid) and psutil.Process(warm_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the warm engine core outlived the process that started it"
        time.sleep(0.2)
