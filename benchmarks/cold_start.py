"""Cold start from zero replicas: time from the first request to its response, raygpu vs the
baselines, all in one Ray session with the same Serve settings (metrics_interval_s, delays, the
control-loop interval). Five interleaved repetitions, medians.

Cases:
  trivial      a function returning a constant: raygpu function vs a plain `@serve.deployment`
  torch_500mb  30 x Linear(2048, 2048) fp32 (504 MB): raygpu torch_model (meta device, node weight
               cache, warm pool) vs a plain deployment that builds the module and `torch.load`s it
  vllm_large   (with --cases) a random Llama of 0.62 GB (bfloat16): the same, each start after its
               weights were evicted from the page cache (posix_fadvise); raygpu both as the first
               replica on the node (nothing staged: it reads the evicted file) and as a later one
               (the first staged the weights in node memory: deployments/engines/model_stage.py)
  cls_enter    the demo's sentence-transformers class from zero replicas (benchmarks/_cls_enter.py):
               with its load in a `snap=True` hook held by a warm worker of the app; the same as a
               new deploy called right after it (no node holds a worker of it yet); the same work in
               a plain enter hook, also a new deploy; and a plain Serve deployment whose `__init__`
               does it; the held workers' resident memory in the JSON
  vllm_tiny    the tiny local Llama: raygpu vLLM deployment vs starting vLLM's own OpenAI server,
               both timed to the first streamed token of a completion (and to its end); raygpu's
               replica lands on a warm worker of the vllm flavour, which hands it a warm engine
               core (`--warm-pool`, the cluster's `raygpu up --warm-pool`), and its start is
               reported by phase

    python -m benchmarks.cold_start [--warm-pool torch=1,vllm=1] --json benchmarks/results/cold_start.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from benchmarks import _cls_enter as cold_start_cls
from benchmarks.harness import median, print_table, private_cluster, write_json

LAYERS, WIDTH = 30, 2048
VLLM_ENGINE_ARGS = {
    "enforce_eager": True,
    "distributed_executor_backend": "uni",
    "max_model_len": 256,
    "kv_cache_memory_bytes": 64 << 20,
    "seed": 0,
}
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}

APP_SOURCE = """
import torch

import raygpu

app = raygpu.App("coldbench")


@app.function(gpu=1, scaledown_window=2)
def trivial() -> str:
    return "ok"


def make_net():
    return torch.nn.Sequential(*[torch.nn.Linear({width}, {width}) for _ in range({layers})])


app.torch_model("big", factory=make_net, weights={weights!r}, gpu=1, scaledown_window=2, max_batch_size=1)
"""

VLLM_SOURCE = """
import raygpu

app = raygpu.App("{app}")
raygpu.vllm(app, "tiny", model={model!r}, served_model_name="tiny", engine_args={engine_args!r}, gpu=1,
            scaledown_window={scaledown_window}, timeout=300, image=raygpu.Image(env={env!r}))
"""


def torch_app_source(weights: str) -> str:
    """The app of the trivial and torch cases: a constant function and the 504 MB torch model."""
    return APP_SOURCE.format(width=WIDTH, layers=LAYERS, weights=weights)


def vllm_app_source(app: str, model: str, scaledown_window: float = 2) -> str:
    """An app serving the local Llama at `model` with the benchmark's engine settings."""
    return VLLM_SOURCE.format(
        app=app, model=model, engine_args=VLLM_ENGINE_ARGS, env=VLLM_ENV, scaledown_window=scaledown_window
    )


def app_sources(work: Path) -> dict[str, str]:
    """Every app this benchmark deploys, by file name (for checks that need no cluster)."""
    return {
        "coldbench.py": torch_app_source(str(work / "big.safetensors")),
        "coldllm.py": vllm_app_source("coldllm", str(work / "tiny-llama")),
        "coldcls.py": cold_start_cls.SOURCE,
    }


def make_net():
    import torch

    return torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])


def plain_autoscaling(metrics_interval_s: float) -> dict:
    """Plain Serve's autoscaling with the settings raygpu's replicas get from Serve (scale to zero)."""
    return {
        "min_replicas": 0,
        "max_replicas": 1,
        "initial_replicas": 0,
        "target_ongoing_requests": 1,
        "metrics_interval_s": metrics_interval_s,
        "look_back_period_s": 2.0,
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "downscale_to_zero_delay_s": 2.0,
    }


def serve_baselines(weights_pt: str, metrics_interval_s: float):
    """Plain Serve deployments with the same autoscaling settings raygpu's replicas get from Serve."""
    from ray import serve

    options = {"autoscaling_config": plain_autoscaling(metrics_interval_s), "ray_actor_options": {"num_gpus": 1}}

    @serve.deployment(**options)
    class Trivial:
        def __call__(self, request) -> str:
            return "ok"

    @serve.deployment(**options)
    class Big:
        def __init__(self, path: str):
            import torch

            self.module = make_net()
            self.module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self.module.eval()

        def __call__(self, request) -> list:
            import torch

            with torch.inference_mode():
                return self.module(torch.ones(1, WIDTH))[0, :2].tolist()

    serve.run(Trivial.bind(), name="plain-trivial", route_prefix="/plain-trivial")
    serve.run(Big.bind(weights_pt), name="plain-big", route_prefix="/plain-big")


def running(app_name: str, deployment: str) -> int:
    from ray.serve.context import _get_global_client

    from raygpu.ops.deploy import live_serve_app

    if app_name.startswith("raygpu-app-"):  # a raygpu app: its live version's Serve application
        app_name = live_serve_app(app_name.removeprefix("raygpu-app-"))
    details = _get_global_client().get_serve_details()
    replicas = (
        details.get("applications", {}).get(app_name, {}).get("deployments", {}).get(deployment, {}).get("replicas", [])
    )
    return len(replicas)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def timed_post(url: str, body, headers=None, timeout: float = 600) -> float:
    started = time.perf_counter()
    response = requests.post(url, json=body, headers=headers or {}, timeout=timeout)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


STREAMED_COMPLETION = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "stream": True}


def timed_stream(url: str, body: dict, timeout: float = 600) -> tuple[float, float]:
    """(seconds to the first streamed chunk, seconds to the end) of one streamed request."""
    started = time.perf_counter()
    first = None
    with requests.post(url, json=body, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=None):
            if chunk.strip() and first is None:
                first = time.perf_counter() - started
    total = time.perf_counter() - started
    return (first if first is not None else total), total


def vllm_server_cold_start(model_dir: str, port: int) -> tuple[float, float]:
    """Seconds from starting vLLM's OpenAI server to the first streamed token of a completion,
    and to its end."""
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
    ]
    env = dict(os.environ, **VLLM_ENV, VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM's server exited with {proc.returncode}")
            try:
                requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=60).raise_for_status()
            except (requests.ConnectionError, requests.HTTPError):
                time.sleep(0.05)
                continue
            since_ready = time.perf_counter()
            first, total = timed_stream(f"http://127.0.0.1:{port}/v1/completions", STREAMED_COMPLETION)
            return since_ready - started + first, since_ready - started + total
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def evict(model_dir: str) -> bool:
    """Drop a model's files from the page cache (POSIX_FADV_DONTNEED), so the next start reads
    them from the disk as a node that never read them would."""
    for path in Path(model_dir).iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def start_phases_after(deployment: tuple[str, str], previous: dict | None, timeout_s: float = 60.0) -> dict:
    """The phases of the replica start that just answered (a report other than `previous`)."""
    from raygpu.ops.deploy import app_status

    app_name, function = deployment
    deadline = time.monotonic() + timeout_s
    while True:
        status = app_status(app_name.removeprefix("raygpu-app-"))
        phases = next(f.last_start_phases for f in status.functions if f.name == function)
        if ("first_response" in phases and phases != previous) or time.monotonic() > deadline:
            return dict(phases)
        time.sleep(0.2)


def pool_at_rest() -> bool:
    """Every flavour of every pool holds its idle workers, none being started."""
    from deployments.node.warm_pool import pool_stats

    return all(
        len(f["idle"]) >= f["size"] and not f["pending"] for s in pool_stats() for f in s.get("flavours", {}).values()
    )


def idle_workers(flavour: str) -> int:
    from deployments.node.warm_pool import pool_stats

    return sum(len(s.get("flavours", {}).get(flavour, {}).get("idle", [])) for s in pool_stats())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--cases", default="trivial,torch_500mb,cls_enter,vllm_tiny")
    parser.add_argument(
        "--warm-pool", default="torch=1,vllm=1", help="warm workers per flavour on the benchmark's node"
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    cases = set(args.cases.split(","))
    work = Path(tempfile.mkdtemp(prefix="raygpu-coldbench-"))

    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = make_net()
    weights_st, weights_pt = work / "big.safetensors", work / "big.pt"
    save_file(reference.state_dict(), str(weights_st))
    torch.save(reference.state_dict(), weights_pt)
    del reference

    from deployments import constants

    runs: dict[str, dict[str, list[float]]] = {}
    result_phases: dict[str, dict[str, float]] = {}
    phase_runs: dict[str, list[dict[str, float]]] = {}
    previous_phases: dict[str, dict[str, float]] = {}
    from deployments.node.warm_pool import parse_pool_sizes

    pool_sizes = parse_pool_sizes(args.warm_pool)
    held_rss: list[int] = []
    with private_cluster(warm_pool=pool_sizes) as info:
        from raygpu.ops.deploy import deploy_app, source_label
        from raygpu.sdk.loader import load_app

        serve_baselines(str(weights_pt), constants.METRICS_INTERVAL_S)
        app_file = work / "coldbench.py"
        app_file.write_text(torch_app_source(str(weights_st)))
        app, path, digest = load_app(str(app_file))
        deploy_app(app, source_label(path, digest))

        targets = {}
        phase_deployments: dict[str, tuple[str, str]] = {}  # sides whose deployment is new on each call
        if "trivial" in cases:
            targets["trivial"] = {
                "raygpu_s": (
                    lambda: timed_post(f"{info.gateway_url}/coldbench/trivial", {}),
                    ("raygpu-app-coldbench", "trivial"),
                ),
                "plain_serve_s": (
                    lambda: timed_post(f"{info.serve_url}/plain-trivial", {}),
                    ("plain-trivial", "Trivial"),
                ),
            }
        if "torch_500mb" in cases:
            targets["torch_500mb"] = {
                "raygpu_s": (
                    lambda: timed_post(f"{info.gateway_url}/coldbench/big", {"inputs": [[1.0] * WIDTH]}),
                    ("raygpu-app-coldbench", "big"),
                ),
                "plain_serve_s": (lambda: timed_post(f"{info.serve_url}/plain-big", {}), ("plain-big", "Big")),
            }
        if "cls_enter" in cases:
            cold_start_cls.serve_baseline(plain_autoscaling(constants.METRICS_INTERVAL_S))
            cold_start_cls.deploy_fresh(work, cold_start_cls.APP, cold_start_cls.SOURCE)
            embed = f"{info.gateway_url}/{cold_start_cls.APP}/Embedder/embed"
            fresh_deploys = {"new": 0, "today": 0}

            def right_after_deploy(side: str, app_name: str, source) -> float:
                fresh_deploys[side] += 1
                cold_start_cls.deploy_fresh(work, app_name, source(fresh_deploys[side]))
                return timed_post(f"{info.gateway_url}/{app_name}/Embedder/embed", cold_start_cls.BODY)

            def fresh_deployments() -> list[tuple[str, str]]:
                apps = [cold_start_cls.NEW_APP] * bool(fresh_deploys["new"])
                apps += [cold_start_cls.TODAY_APP] * bool(fresh_deploys["today"])
                return [(f"raygpu-app-{a}", "Embedder") for a in apps]

            phase_deployments.update(
                {
                    "raygpu_no_app_worker_s": (f"raygpu-app-{cold_start_cls.NEW_APP}", "Embedder"),
                    "raygpu_today_s": (f"raygpu-app-{cold_start_cls.TODAY_APP}", "Embedder"),
                }
            )
            targets["cls_enter"] = {
                "raygpu_s": (lambda: timed_post(embed, cold_start_cls.BODY), ("raygpu-app-coldcls", "Embedder")),
                "raygpu_no_app_worker_s": (
                    lambda: right_after_deploy("new", cold_start_cls.NEW_APP, cold_start_cls.new_source),
                    None,
                ),
                "raygpu_today_s": (
                    lambda: right_after_deploy("today", cold_start_cls.TODAY_APP, cold_start_cls.today_source),
                    None,
                ),
                "plain_serve_s": (
                    lambda: timed_post(f"{info.serve_url}/plain-embedder", cold_start_cls.BODY),
                    ("plain-embedder", "PlainEmbedder"),
                ),
            }
        from deployments.engines.model_stage import clear as clear_staged
        from deployments.engines.model_stage import staged_path
        from raygpu.controlplane.local_cluster import free_port
        from raygpu.sdk.testing import build_random_llama, build_tiny_llama

        def vllm_case(app_name: str, model_dir: str, cold_read: bool) -> dict:
            """raygpu's side and vLLM's own server's; with `cold_read`, each after the weights were
            evicted from the page cache, and raygpu also as the node's first replica (its staged
            copy removed first)."""
            llm_file = work / f"{app_name}.py"
            llm_file.write_text(vllm_app_source(app_name, model_dir))
            llm, path, digest = load_app(str(llm_file))
            deploy_app(llm, source_label(path, digest))
            url = f"{info.gateway_url}/{app_name}/tiny/v1/completions"
            deployment = (f"raygpu-app-{app_name}", "tiny")

            def later_replica_start():
                if cold_read:  # a replica before it on the node staged the weights; the source is cold
                    wait_until(lambda: staged_path(model_dir) is not None, 120, "the weights staged on the node")
                    evict(model_dir)
                return timed_stream(url, STREAMED_COMPLETION)

            sides = {
                "raygpu_s": (later_replica_start, deployment),
                "vllm_server_s": (
                    lambda: (cold_read and evict(model_dir), vllm_server_cold_start(model_dir, free_port()))[1],
                    None,
                ),
            }
            if cold_read:
                sides["raygpu_first_on_node_s"] = (
                    lambda: (evict(model_dir), clear_staged(model_dir), timed_stream(url, STREAMED_COMPLETION))[2],
                    deployment,
                )
            return sides

        if "vllm_tiny" in cases:
            targets["vllm_tiny"] = vllm_case("coldllm", str(build_tiny_llama(work / "tiny-llama")), cold_read=False)
        if "vllm_large" in cases:
            targets["vllm_large"] = vllm_case("coldbig", str(build_random_llama(work / "random-llama")), cold_read=True)
        for case, sides in targets.items():
            runs[case] = {side: [] for side in sides}
            # one untimed round: one-time costs (the node weight cache's first read of the file, the
            # first worker processes of the session) are not what a cold start costs afterwards
            for rep in range(-1, args.repetitions):
                order = list(sides) if rep % 2 == 0 else list(reversed(list(sides)))
                for side in order:
                    call, deployment = sides[side]
                    if deployment is not None:
                        wait_until(lambda: running(*deployment) == 0, 180, f"{deployment} at zero replicas")
                    flavour = "vllm" if case.startswith("vllm") else "torch"
                    if case.startswith("vllm"):
                        # either side on a node at rest: the pool refilled and done importing (a vllm
                        # worker's refill imports vLLM twice; on a small node it would slow either side)
                        wait_until(pool_at_rest, 600, "the warm pool at rest")
                    elif case == "cls_enter":
                        # every side from the same node at rest: no replica of the case running, each
                        # app unit's worker held (a replica that took one had it replaced; a fresh
                        # deploy's first one made) and none still loading: each would take CPU
                        wait_until(
                            lambda: (
                                not any(
                                    running(*d)
                                    for d in fresh_deployments() + [(f"raygpu-app-{cold_start_cls.APP}", "Embedder")]
                                )
                            ),
                            180,
                            "the case's deployments at zero",
                        )
                        wait_until(cold_start_cls.app_workers_at_rest, 300, "the app warm workers held, none loading")
                        if side == "raygpu_s":  # its deployment in the app's env (switched at rest)
                            wait_until(cold_start_cls.in_app_env, 120, "the deployment in its app env")
                            held_rss.extend(cold_start_cls.held_workers().values())
                    elif side.startswith("raygpu") and pool_sizes.get(flavour):
                        # the steady state the pool is sized for: an idle warm worker of the flavour
                        wait_until(lambda: idle_workers(flavour) > 0, 180, f"an idle {flavour} warm worker")
                    measured = call()
                    seconds, total = measured if isinstance(measured, tuple) else (measured, measured)
                    if rep >= 0:
                        runs[case][side].append(seconds)
                        if isinstance(measured, tuple):
                            runs[case].setdefault(side.removesuffix("_s") + "_total_s", []).append(total)
                    print(f"{case} rep {rep + 1}/{args.repetitions} {side}: {seconds:.3f} s", file=sys.stderr)
                    if side.startswith("raygpu") and rep >= 0:
                        phases = start_phases_after(deployment or phase_deployments[side], previous_phases.get(case))
                        previous_phases[case] = phases
                        phase_runs.setdefault(f"{case}/{side}", []).append(phases)
            for key, starts in phase_runs.items():
                if key.startswith(f"{case}/"):
                    names = [p for p in starts[-1] if all(p in s for s in starts)]
                    result_phases[key] = {p: round(median([s[p] for s in starts]), 3) for p in names}
                    print(f"{key}: raygpu's start by phase (medians): {result_phases[key]}", file=sys.stderr)

    result: dict = {
        "cases": {},
        "repetitions": args.repetitions,
        "raw": runs,
        "raygpu_start_phases": result_phases,
        "settings": {
            "metrics_interval_s": constants.METRICS_INTERVAL_S,
            "control_loop_interval_s": constants.DEFAULT_CONTROL_LOOP_INTERVAL_S,
            "warm_pool": pool_sizes,
            "torch_model_mb": round(LAYERS * (WIDTH * WIDTH + WIDTH) * 4 / 1e6),
        },
    }
    if held_rss:
        result["app_worker_rss_mb"] = {"coldcls/Embedder": round(median([float(b) for b in held_rss]) / 2**20)}
    rows = []
    for case, sides in runs.items():
        medians = {side: round(median(values), 3) for side, values in sides.items()}
        baseline = "vllm_server_s" if case.startswith("vllm") else "plain_serve_s"
        medians["ratio"] = round(medians["raygpu_s"] / medians[baseline], 3)
        if "raygpu_today_s" in medians:
            medians["no_app_worker_vs_today"] = round(medians["raygpu_no_app_worker_s"] / medians["raygpu_today_s"], 3)
            medians["today_ratio"] = round(medians["raygpu_today_s"] / medians[baseline], 3)
        result["cases"][case] = medians
        rows.append(
            (
                case,
                f"{medians['raygpu_s']:.3f}",
                f"{medians[baseline]:.3f} ({baseline[:-2]})",
                f"{medians['ratio']:.2f}x",
            )
        )
    print_table(
        "cold start from zero: first request to response (vllm_tiny: to the first streamed token), "
        "medians of interleaved repetitions",
        rows,
        ("case", "raygpu s", "baseline s", "raygpu / baseline"),
    )
    for case, phases in result_phases.items():
        print_table(
            f"{case}: raygpu's last replica start by phase (seconds each)",
            [(phase, f"{seconds:.3f}") for phase, seconds in phases.items()],
            ("phase", "s"),
        )
    write_json(args.json_path, result)


if __name__ == "__main__":
    main()
