"""Cold start from zero GPU nodes: a call to a function whose GPU pool has no node, answered from a
node the autoscaler launched for it, raygpu vs a plain `@serve.deployment` asking for the same
accelerator, on one fake multi-node cluster (Ray's fake provider: a node launch here is a raylet
start, not a cloud VM). Interleaved repetitions, medians; raygpu's start broken into phases; and
how long the idle node lives after its last replica stopped (the autoscaler's idle timeout, plus
the warm pool's leave delay for raygpu).

    python -m benchmarks.node_cold_start --json benchmarks/results/node_cold_start.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import requests

from benchmarks.cold_start import plain_autoscaling, wait_until
from benchmarks.harness import median, print_table, private_cluster, write_json

ACCELERATOR = "A10G"
NODE_TYPE = "fake_a10g"
IDLE_TIMEOUT_S = 20.0
APP_SOURCE = f"""
import raygpu

app = raygpu.App("nodebench")


@app.function(gpu="{ACCELERATOR}", scaledown_window=2)
def trivial() -> str:
    return "ok"
"""


def app_sources(work: Path) -> dict[str, str]:
    """The app this benchmark deploys, by file name (for checks that need no cluster)."""
    return {"nodebench.py": APP_SOURCE}


def nodes_alive() -> list:
    from billing.node_inventory import list_nodes

    return [n for n in list_nodes() if n.alive and n.node_type == NODE_TYPE]


def plain_baseline(metrics_interval_s: float) -> None:
    from ray import serve

    @serve.deployment(
        autoscaling_config=plain_autoscaling(metrics_interval_s),
        ray_actor_options={"num_gpus": 1, "accelerator_type": ACCELERATOR},
    )
    class Trivial:
        def __call__(self, request) -> str:
            return "ok"

    serve.run(Trivial.bind(), name="plain-node", route_prefix="/plain-node")


def one_start(url: str, replicas_gone) -> tuple[float, float]:
    """(seconds from the call to its answer, seconds the node lived after its replica stopped)."""
    wait_until(lambda: not nodes_alive(), 300, "no node of the pool alive")
    started = time.perf_counter()
    response = requests.post(url, json={}, timeout=600)
    response.raise_for_status()
    cold = time.perf_counter() - started
    wait_until(replicas_gone, 120, "scale to zero")
    stopped = time.monotonic()
    wait_until(lambda: not nodes_alive(), 300, "the idle node to go")
    return cold, time.monotonic() - stopped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--repetitions", type=int, default=3)
    return parser


def main() -> None:
    args = build_parser().parse_args()

    from ray.serve.context import _get_global_client

    from deployments import constants
    from raygpu.ops.deploy import app_status, deploy_app
    from raygpu.sdk.loader import load_app

    def replicas(app_name: str, deployment: str) -> int:
        details = _get_global_client().get_serve_details().get("applications", {})
        return len(details.get(app_name, {}).get("deployments", {}).get(deployment, {}).get("replicas", []))

    with private_cluster(gpus=1, fake_nodes=f"{ACCELERATOR}:1", node_idle_timeout_s=IDLE_TIMEOUT_S) as info:
        source = Path(tempfile.mkdtemp()) / "nodebench.py"
        source.write_text(APP_SOURCE)
        app, _, _ = load_app(str(source))
        deploy_app(app, "benchmark")
        plain_baseline(constants.METRICS_INTERVAL_S)
        serve_url = info.serve_url
        raygpu_url = f"{info.gateway_url}/nodebench/trivial"

        def raygpu_gone() -> bool:
            return app_status("nodebench").functions[0].replicas.running == 0 and not any(
                r.state != "STOPPING" for r in app_status("nodebench").functions[0].replica_details
            )

        results: dict[str, list[float]] = {"raygpu": [], "plain_serve": []}
        idle: dict[str, list[float]] = {"raygpu": [], "plain_serve": []}
        phases: list[dict[str, float]] = []
        for _ in range(args.repetitions):
            cold, lived = one_start(raygpu_url, raygpu_gone)
            results["raygpu"].append(cold)
            idle["raygpu"].append(lived)
            phases.append(app_status("nodebench").functions[0].last_start_phases)
            cold, lived = one_start(f"{serve_url}/plain-node", lambda: replicas("plain-node", "Trivial") == 0)
            results["plain_serve"].append(cold)
            idle["plain_serve"].append(lived)
    phase_names = [name for name in phases[-1]] if phases else []
    by_phase = {name: median([p.get(name, 0.0) for p in phases]) for name in phase_names}
    rows = [
        [
            "cold start from zero nodes (s)",
            f"{median(results['raygpu']):.2f}",
            f"{median(results['plain_serve']):.2f}",
            f"{median(results['raygpu']) / median(results['plain_serve']):.2f}",
        ],
        [
            "idle node lifetime after last replica (s)",
            f"{median(idle['raygpu']):.1f}",
            f"{median(idle['plain_serve']):.1f}",
            f"{median(idle['raygpu']) / median(idle['plain_serve']):.2f}",
        ],
    ]
    print_table(
        f"cold start from zero {ACCELERATOR} nodes ({args.repetitions} repetitions)",
        [tuple(r) for r in rows],
        ("metric (median)", "raygpu", "plain Serve", "raygpu / plain"),
    )
    print("raygpu start by phase (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in by_phase.items()))
    write_json(
        args.json_path,
        {
            "repetitions": args.repetitions,
            "node_idle_timeout_s": IDLE_TIMEOUT_S,
            "cold_start_s": results,
            "idle_node_lifetime_s": idle,
            "raygpu_phases_median_s": by_phase,
            "ratio_cold_start": median(results["raygpu"]) / median(results["plain_serve"]),
        },
    )


if __name__ == "__main__":
    main()
