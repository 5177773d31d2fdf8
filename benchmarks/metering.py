"""Cost of metering on the warm request path: the same function deployed twice in one cluster,
once metered (every call a ledger record, lifecycle events, heartbeats) and once not. Five
interleaved repetitions of 300 sequential requests (p50) and 8 concurrent clients for 8 s
(throughput); medians over repetitions.

    python -m benchmarks.metering --json benchmarks/results/metering.json
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

app = raygpu.App("{name}")


@app.function(gpu=1, min_containers=1, max_containers=1, max_inputs=64, max_queue=1000, scaledown_window=600)
def ping(text: str = "") -> str:
    return "pong"
"""


def app_sources(work: Path) -> dict[str, str]:
    """Every app this benchmark deploys, by file name (for checks that need no cluster)."""
    return {f"{name}.py": APP_SOURCE.format(name=name) for name in ("metered", "unmetered")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0)
    return parser


def main() -> None:
    args = build_parser().parse_args()

    with private_cluster() as info:
        import ray

        from billing.constants import METER_ACTOR_NAME, METER_NAMESPACE
        from raygpu.ops.deploy import deploy_app, source_label
        from raygpu.sdk.loader import load_app

        folder = Path(tempfile.mkdtemp())
        for name, metered in (("metered", True), ("unmetered", False)):
            app_file = folder / f"{name}.py"
            app_file.write_text(APP_SOURCE.format(name=name))
            app, path, digest = load_app(str(app_file))
            deploy_app(app, source_label(path, digest), metered=metered)

        targets = {
            name: (
                lambda s, name=name: s.post(f"{info.gateway_url}/{name}/ping", json={"text": "x"}).raise_for_status()
            )
            for name in ("metered", "unmetered")
        }
        for call in targets.values():
            sequential_latencies_ms(call, 50)
        runs: dict[str, dict[str, list[float]]] = {name: {"p50_ms": [], "rps": []} for name in targets}
        for rep in range(args.repetitions):
            order = list(targets) if rep % 2 == 0 else list(reversed(targets))
            for name in order:
                runs[name]["p50_ms"].append(percentile(sequential_latencies_ms(targets[name], args.sequential), 50))
            for name in order:
                runs[name]["rps"].append(concurrent_rps(targets[name], args.clients, args.duration))
            print(
                f"repetition {rep + 1}/{args.repetitions}: "
                + ", ".join(f"{n} p50 {runs[n]['p50_ms'][-1]:.2f} ms rps {runs[n]['rps'][-1]:.0f}" for n in targets),
                file=sys.stderr,
            )
        meter = ray.get_actor(METER_ACTOR_NAME, namespace=METER_NAMESPACE)
        recorded = {fn: sum(c.values()) for fn, c in ray.get(meter.request_counts.remote()).items()}

    result = {
        name: {metric: round(median(values), 3) for metric, values in metrics.items()} for name, metrics in runs.items()
    }
    result["ratios"] = {
        "rps": round(result["metered"]["rps"] / result["unmetered"]["rps"], 3),
        "p50": round(result["metered"]["p50_ms"] / result["unmetered"]["p50_ms"], 3),
    }
    result["ledger_requests"] = recorded
    result["repetitions"] = args.repetitions
    result["params"] = {"sequential": args.sequential, "clients": args.clients, "duration_s": args.duration}
    result["raw"] = runs
    print_table(
        "warm serving with metering on vs off, medians of interleaved repetitions",
        [(n, f"{result[n]['p50_ms']:.2f}", f"{result[n]['rps']:.0f}") for n in targets]
        + [("metered / unmetered", f"{result['ratios']['p50']:.3f}x", f"{result['ratios']['rps']:.3f}x")],
        ("function", "p50 ms", "rps"),
    )
    write_json(args.json_path, result)


if __name__ == "__main__":
    main()
