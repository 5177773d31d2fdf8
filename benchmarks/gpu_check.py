"""GPU check of the model-deployment code paths, outside Ray (imports torch, and safetensors / vllm
when importable; no network; generates its own weights; well under 3 minutes).

Exercises what replicas run on a GPU: CUDA initialisation, weights from shared (object-store style)
arrays onto a module built on the meta device and moved to the GPU, dynamic batching of concurrent
calls, a live weight update between batches, and the vLLM engine wrapper when vllm is installed.
Prints timings (cache load vs `torch.load`, CUDA init, each phase). Exits non-zero if CUDA is present
and a torch path was skipped or failed; what is not installed is reported as skipped.

    python -m benchmarks.gpu_check [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from deployments.engines.torch_engine import (
    DynamicBatcher,
    LoadedModel,
    ModelSlots,
    build_module,
    from_shared,
    read_weights,
    run_inference,
    to_shared,
)

LAYERS, WIDTH = 24, 2048  # ~400 MB fp32


def make_net() -> torch.nn.Module:
    return torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def check_vllm(work: Path, cuda: bool) -> tuple[bool, float, str]:
    """The vLLM engine wrapper on the tiny local Llama: a completion and a streamed chat that agree."""
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from deployments.engines.vllm_engine import ResponseStart, VllmServer
    from raygpu.sdk.testing import build_tiny_llama

    model = str(build_tiny_llama(work / "tiny-llama"))
    engine_args = {"enforce_eager": True, "max_model_len": 256, "distributed_executor_backend": "uni", "seed": 0}
    engine_args.update({"gpu_memory_utilization": 0.2} if cuda else {"kv_cache_memory_bytes": 64 << 20})

    async def run() -> tuple[bool, float, str]:
        started = time.perf_counter()
        server = await VllmServer.start(model, "tiny", engine_args=engine_args)
        start_s = time.perf_counter() - started
        try:

            async def call(body: dict) -> tuple[int, bytes]:
                status, chunks = 0, []
                async for item in server.request(
                    "POST",
                    "/v1/chat/completions",
                    headers=[("content-type", "application/json")],
                    body=json.dumps(body).encode(),
                ):
                    if isinstance(item, ResponseStart):
                        status = item.status
                    else:
                        chunks.append(item)
                return status, b"".join(chunks)

            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": "import os"}],
                "max_tokens": 12,
                "temperature": 0,
            }
            status, whole = await call(body)
            text = json.loads(whole)["choices"][0]["message"]["content"]
            status_s, streamed = await call({**body, "stream": True})
            pieces = [
                json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                for line in streamed.decode().splitlines()
                if line.startswith("data: {") and json.loads(line[6:])["choices"]
            ]
            return status == status_s == 200 and "".join(pieces) == text, start_s, text
        finally:
            await server.close()

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path", default=None)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    report: dict = {"torch": torch.__version__, "checks": {}, "timings_s": {}, "skipped": {}}
    checks, timings, skipped = report["checks"], report["timings_s"], report["skipped"]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    report["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
    if cuda:
        _, timings["cuda_init"] = timed(
            lambda: (torch.cuda.init(), torch.zeros(1, device="cuda"), torch.cuda.synchronize())
        )
    else:
        skipped["cuda"] = "no CUDA device: GPU paths run on the CPU"

    work = Path(tempfile.mkdtemp(prefix="raygpu-gpucheck-"))
    torch.manual_seed(0)
    reference = make_net()
    x = torch.randn(4, WIDTH)
    expected = reference(x).detach()
    pt_path = work / "net.pt"
    torch.save(reference.state_dict(), pt_path)
    paths = {"torch.save": pt_path}
    try:
        from safetensors.torch import save_file

        st_path = work / "net.safetensors"
        save_file(reference.state_dict(), str(st_path))
        paths["safetensors"] = st_path
    except ImportError:
        skipped["safetensors"] = "safetensors is not installed"
    del reference

    # baseline: build with random init, torch.load, load_state_dict, to device
    def plain_load():
        module = make_net()
        module.load_state_dict(torch.load(pt_path, map_location="cpu", weights_only=True))
        module = module.to(device).eval()
        sync(device)
        return module

    _, timings["plain_build_torch_load_to_device"] = timed(plain_load)

    # raygpu: the node cache holds numpy arrays in shared memory; replicas view them without a copy
    for name, path in paths.items():
        shared, timings[f"cache_fill_{name}"] = timed(lambda: to_shared(read_weights(path)))
        state_dict, timings["cache_map"] = timed(from_shared, shared)
        (module, build), total = timed(lambda: build_module(make_net, state_dict, device))
        sync(device)
        timings[f"cached_meta_build_to_device_{name}"] = total
        timings.update(
            {
                f"phase_{k}": round(v, 4)
                for k, v in {
                    "meta_build": build.build_s,
                    "assign": build.load_s,
                    "to_device": build.to_device_s,
                }.items()
            }
        )
        with torch.inference_mode():
            got = module(x.to(device)).cpu()
        checks[f"weights_{name}_meta_device_{device}"] = bool(
            build.meta_device and torch.allclose(got, expected, atol=1e-4)
        )
        if cuda:
            checks[f"weights_{name}_on_gpu"] = all(p.is_cuda for p in module.parameters())
    report["speedup_cached_vs_plain"] = round(
        timings["plain_build_torch_load_to_device"] / timings["cached_meta_build_to_device_torch.save"], 1
    )

    # batching and a live weight update on the device
    async def serve_batches() -> dict:
        versions = {"current": LoadedModel(module, 1)}

        async def load(_):
            return versions["current"]

        slots = ModelSlots(2, load)
        await slots.get("net")

        def run_batch(key, items):
            current = slots.peek(key)
            outputs = run_inference(current.module, [i for i in items], device)
            return [(o, current.weights_version) for o in outputs]

        batcher = DynamicBatcher(run_batch, max_batch_size=16, batch_wait_timeout_s=0.01)
        row = x[0].tolist()
        first = await asyncio.gather(*(batcher.submit("net", row) for _ in range(32)))
        doubled = {k: v * 2 for k, v in state_dict.items()}
        new_module, _ = build_module(make_net, doubled, device)
        slots.replace("net", LoadedModel(new_module, 2))
        second = await asyncio.gather(*(batcher.submit("net", row) for _ in range(32)))
        batcher.close()
        return {"sizes": dict(batcher.batch_sizes), "first": first, "second": second}

    served, timings["batched_64_calls"] = timed(lambda: asyncio.run(serve_batches()))
    checks["batches_formed"] = max(served["sizes"]) > 1
    checks["live_update_switched_once"] = {v for _, v in served["first"]} == {1} and {
        v for _, v in served["second"]
    } == {2}
    report["batch_sizes"] = served["sizes"]

    try:
        import vllm

        report["vllm"] = vllm.__version__
    except ImportError:
        skipped["vllm_engine"] = "vllm is not installed"
    else:
        checks["vllm_engine"], timings["vllm_engine_start"], report["vllm_sample"] = check_vllm(work, cuda)

    failed = [name for name, ok in checks.items() if not ok]
    # with CUDA present every torch path must have run on the GPU
    required = (
        {
            "weights_torch.save_on_gpu",
            "weights_torch.save_meta_device_cuda",
            "batches_formed",
            "live_update_switched_once",
        }
        if cuda
        else set()
    )
    torch_skipped = sorted(required - set(checks)) + (["cuda_init"] if cuda and "cuda_init" not in timings else [])
    report["ok"] = not failed and not torch_skipped
    print(json.dumps(report, indent=2))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    if failed:
        sys.exit(f"gpu_check: failed: {', '.join(failed)}")
    if torch_skipped:
        sys.exit(f"gpu_check: CUDA is present but these torch paths did not run: {', '.join(torch_skipped)}")


if __name__ == "__main__":
    main()
