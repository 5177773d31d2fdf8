"""Generation throughput of 32 concurrent completions: raygpu's vLLM deployment (through the
gateway) vs vLLM's own OpenAI server on the same model and engine settings, same machine, five
interleaved repetitions, medians.

    python -m benchmarks.vllm_throughput --json benchmarks/results/vllm_throughput.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from benchmarks.cold_start import VLLM_ENGINE_ARGS, VLLM_ENV, vllm_app_source
from benchmarks.harness import median, print_table, private_cluster, write_json


def burst(url: str, clients: int, max_tokens: int) -> float:
    """Tokens per second of `clients` simultaneous completions of exactly `max_tokens` tokens."""
    tokens = [0] * clients
    errors: list[str] = []

    def one(i: int) -> None:
        r = requests.post(
            url,
            timeout=300,
            json={
                "model": "tiny",
                "prompt": f"def f{i}(",
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            },
        )
        if r.status_code != 200:
            errors.append(r.text[:200])
            return
        tokens[i] = r.json()["usage"]["completion_tokens"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} completions failed: {errors[0]}")
    return sum(tokens) / elapsed


def start_vllm_server(model_dir: str, port: int) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--served-model-name",
        "tiny",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--enforce-eager",
        "--max-model-len",
        "256",
        "--kv-cache-memory-bytes",
        str(VLLM_ENGINE_ARGS["kv_cache_memory_bytes"]),
        "--distributed-executor-backend",
        "uni",
        "--seed",
        "0",
        "--disable-log-stats",
    ]
    env = dict(os.environ, **VLLM_ENV, VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM's server exited with {proc.returncode}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("vLLM's server did not start within 300 s")


APP_NAME = "llmbench"


def app_sources(work: Path) -> dict[str, str]:
    """The app this benchmark deploys, by file name (for checks that need no cluster)."""
    return {f"{APP_NAME}.py": vllm_app_source(APP_NAME, str(work / "tiny-llama"), scaledown_window=600)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=192)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    work = Path(tempfile.mkdtemp(prefix="raygpu-vllmbench-"))
    from raygpu.sdk.testing import build_tiny_llama

    model_dir = str(build_tiny_llama(work / "tiny-llama"))
    runs: dict[str, list[float]] = {"raygpu": [], "vllm_server": []}
    with private_cluster() as info:
        from raygpu.controlplane.local_cluster import free_port
        from raygpu.ops.deploy import deploy_app, source_label
        from raygpu.sdk.loader import load_app

        app_file = work / f"{APP_NAME}.py"
        app_file.write_text(vllm_app_source(APP_NAME, model_dir, scaledown_window=600))
        app, path, digest = load_app(str(app_file))
        deploy_app(app, source_label(path, digest))
        port = free_port()
        server = start_vllm_server(model_dir, port)
        try:
            urls = {
                "raygpu": f"{info.gateway_url}/{APP_NAME}/tiny/v1/completions",
                "vllm_server": f"http://127.0.0.1:{port}/v1/completions",
            }
            for url in urls.values():  # warm both at full size (the raygpu replica starts here)
                burst(url, 2, 4)
                burst(url, args.clients, args.max_tokens)
            for rep in range(args.repetitions):
                order = list(urls) if rep % 2 == 0 else list(reversed(list(urls)))
                for name in order:
                    runs[name].append(burst(urls[name], args.clients, args.max_tokens))
                    print(f"rep {rep + 1}/{args.repetitions} {name}: {runs[name][-1]:.0f} tokens/s", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=30)

    result = {name: {"tokens_per_s": round(median(values), 1)} for name, values in runs.items()}
    result["ratio"] = round(result["raygpu"]["tokens_per_s"] / result["vllm_server"]["tokens_per_s"], 3)
    result.update(repetitions=args.repetitions, clients=args.clients, max_tokens=args.max_tokens, raw=runs)
    print_table(
        f"{args.clients} concurrent completions of {args.max_tokens} tokens, medians",
        [(n, f"{result[n]['tokens_per_s']:.0f}") for n in runs] + [("raygpu / vllm_server", f"{result['ratio']:.2f}x")],
        ("server", "tokens/s"),
    )
    write_json(args.json_path, result)


if __name__ == "__main__":
    main()
