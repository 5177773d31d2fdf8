"""A vLLM deployment of the tiny local Llama (built by the test), sized for a CPU test machine."""

import os

import raygpu

app = raygpu.App("llm")

raygpu.vllm(
    app,
    "chat",
    model=os.environ.get("RAYGPU_TEST_LLAMA", "/nonexistent"),
    served_model_name="tiny",
    engine_args={
        "enforce_eager": True,
        "distributed_executor_backend": "uni",
        "max_model_len": 256,
        "kv_cache_memory_bytes": 64 << 20,
        "seed": 0,
    },
    gpu=1,
    scaledown_window=300,
    timeout=120,
    image=raygpu.Image(env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}),
)
