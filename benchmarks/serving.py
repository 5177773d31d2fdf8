"""Warm request overhead of raygpu's gateway against plain Ray Serve, same cluster, same run.

The same trivial handler is served (a) as a raygpu function behind the gateway and (b) as a plain
`@serve.deployment` with its own route. Five interleaved repetitions of 500 sequential requests
(p50/p99) and 8 concurrent clients for 10 s (throughput); medians over repetitions.

    python -m benchmarks.serving --json benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import (
    concurrent_rps,
    median,
    percentile,
    print_table,
    private_cluster,
    sequential_latencies_ms,
    write_json,
)

APP_SOURCE = """
import raygpu

app = raygpu.App("bench")


@app.function(min_containers=1, max_containers=1, max_inputs=64, max_queue=1000, scaledown_window=600)
def ping() -> str:
    return "pong"
"""


def app_sources(work: Path) -> dict[str, str]:
    """The app this benchmark deploys, by file name (for checks that need no cluster)."""
    return {"bench_app.py": APP_SOURCE}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    return parser


def main() -> None:
    args = build_parser().parse_args()

    with private_cluster() as info:
        from ray import serve

        from raygpu.ops.deploy import deploy_app, source_label
        from raygpu.sdk.loader import load_app

        @serve.deployment(num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
        class Plain:
            def __call__(self, request) -> str:
                return "pong"

        serve.run(Plain.bind(), name="plain", route_prefix="/plain")
        app_file = Path(tempfile.mkdtemp()) / "bench_app.py"
        app_file.write_text(APP_SOURCE)
        app, path, digest = load_app(str(app_file))
        deploy_app(app, source_label(path, digest))

        targets = {
            "raygpu": lambda s: s.post(f"{info.gateway_url}/bench/ping", json={}).raise_for_status(),
            "plain_serve": lambda s: s.post(f"{info.serve_url}/plain", json={}).raise_for_status(),
        }
        for call in targets.values():  # warm both paths
            sequential_latencies_ms(call, 50)
        runs: dict[str, dict[str, list[float]]] = {name: {"p50_ms": [], "p99_ms": [], "rps": []} for name in targets}
        for rep in range(args.repetitions):
            order = list(targets) if rep % 2 == 0 else list(reversed(targets))
            for name in order:
                latencies = sequential_latencies_ms(targets[name], args.sequential)
                runs[name]["p50_ms"].append(percentile(latencies, 50))
                runs[name]["p99_ms"].append(percentile(latencies, 99))
            for name in order:
                runs[name]["rps"].append(concurrent_rps(targets[name], args.clients, args.duration))
            print(
                f"repetition {rep + 1}/{args.repetitions}: "
                + ", ".join(f"{n} p50 {runs[n]['p50_ms'][-1]:.2f} ms rps {runs[n]['rps'][-1]:.0f}" for n in targets),
                file=sys.stderr,
            )

    result = {
        name: {metric: round(median(values), 3) for metric, values in metrics.items()} for name, metrics in runs.items()
    }
    result["ratios"] = {
        "p50": round(result["raygpu"]["p50_ms"] / result["plain_serve"]["p50_ms"], 3),
        "p99": round(result["raygpu"]["p99_ms"] / result["plain_serve"]["p99_ms"], 3),
        "rps": round(result["raygpu"]["rps"] / result["plain_serve"]["rps"], 3),
    }
    result["repetitions"] = args.repetitions
    result["params"] = {"sequential": args.sequential, "clients": args.clients, "duration_s": args.duration}
    result["raw"] = runs
    print_table(
        "warm serving: raygpu (gateway) vs plain Ray Serve, medians of interleaved repetitions",
        [(n, f"{result[n]['p50_ms']:.2f}", f"{result[n]['p99_ms']:.2f}", f"{result[n]['rps']:.0f}") for n in targets]
        + [
            (
                "ratio",
                f"{result['ratios']['p50']:.2f}x",
                f"{result['ratios']['p99']:.2f}x",
                f"{result['ratios']['rps']:.2f}x",
            )
        ],
        ("path", "p50 ms", "p99 ms", "rps"),
    )
    write_json(args.json_path, result)


if __name__ == "__main__":
    main()
