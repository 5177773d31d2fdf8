"""A three-stage pipeline through raygpu against the same three stages composed with plain Ray
Serve deployment handles, same cluster, same run.

raygpu: HTTP -> gateway -> stage_one -> stage_two -> stage_three, each stage a raygpu function
calling the next with `raygpu.lookup(...).remote.aio(...)` (the call core over Serve handles: call
id, deadline, admission, resends). Plain Serve: HTTP -> Serve's proxy -> One -> Two -> Three, each
deployment holding the next one's handle. Interleaved repetitions of sequential requests; p50 and
p99 per repetition, medians over repetitions.

    python -m benchmarks.pipeline --json benchmarks/results/pipeline.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import median, percentile, print_table, private_cluster, sequential_latencies_ms, write_json

APP_SOURCE = """
import raygpu

app = raygpu.App("pipe")
WARM = dict(min_containers=1, max_containers=1, max_inputs=64, max_queue=1000, scaledown_window=600)


@app.function(**WARM)
async def stage_one(x: int) -> int:
    return await raygpu.lookup("pipe", "stage_two").remote.aio(x=x + 1)


@app.function(**WARM)
async def stage_two(x: int) -> int:
    return await raygpu.lookup("pipe", "stage_three").remote.aio(x=x * 2)


@app.function(**WARM)
async def stage_three(x: int) -> int:
    return x - 1
"""


def app_sources(work: Path) -> dict[str, str]:
    """The app this benchmark deploys, by file name (for checks that need no cluster)."""
    return {"pipe_app.py": APP_SOURCE}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per repetition and path")
    return parser


def plain_serve_pipeline() -> None:
    """The same three stages as plain Serve deployments, each calling the next through its handle."""
    from ray import serve
    from starlette.requests import Request

    options = {"num_replicas": 1, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.25}}

    @serve.deployment(**options)
    class Three:
        async def __call__(self, x: int) -> int:
            return x - 1

    @serve.deployment(**options)
    class Two:
        def __init__(self, three):
            self.three = three

        async def __call__(self, x: int) -> int:
            return await self.three.remote(x * 2)

    @serve.deployment(**options)
    class One:
        def __init__(self, two):
            self.two = two

        async def __call__(self, request: Request) -> int:
            body = await request.json()
            return await self.two.remote(body["x"] + 1)

    serve.run(One.bind(Two.bind(Three.bind())), name="plain-pipe", route_prefix="/plain-pipe")


def main() -> None:
    args = build_parser().parse_args()

    with private_cluster() as info:
        from raygpu.ops.deploy import deploy_app, source_label
        from raygpu.sdk.loader import load_app

        plain_serve_pipeline()
        app_file = Path(tempfile.mkdtemp()) / "pipe_app.py"
        app_file.write_text(APP_SOURCE)
        app, path, digest = load_app(str(app_file))
        deploy_app(app, source_label(path, digest))

        def check(response) -> None:
            response.raise_for_status()
            assert response.json() == 7, response.text  # (3 + 1) * 2 - 1

        targets = {
            "raygpu": lambda s: check(s.post(f"{info.gateway_url}/pipe/stage_one", json={"x": 3})),
            "plain_serve": lambda s: check(s.post(f"{info.serve_url}/plain-pipe", json={"x": 3})),
        }
        for call in targets.values():  # warm both paths (handles, routers, lookups)
            sequential_latencies_ms(call, 50)
        runs: dict[str, dict[str, list[float]]] = {name: {"p50_ms": [], "p99_ms": []} for name in targets}
        for rep in range(args.repetitions):
            order = list(targets) if rep % 2 == 0 else list(reversed(targets))
            for name in order:
                latencies = sequential_latencies_ms(targets[name], args.requests)
                runs[name]["p50_ms"].append(percentile(latencies, 50))
                runs[name]["p99_ms"].append(percentile(latencies, 99))
            print(
                f"repetition {rep + 1}/{args.repetitions}: "
                + ", ".join(
                    f"{n} p50 {runs[n]['p50_ms'][-1]:.2f} ms p99 {runs[n]['p99_ms'][-1]:.2f} ms" for n in targets
                ),
                file=sys.stderr,
            )

    result: dict = {
        name: {metric: round(median(values), 3) for metric, values in metrics.items()} for name, metrics in runs.items()
    }
    result["ratios"] = {
        "p50": round(result["raygpu"]["p50_ms"] / result["plain_serve"]["p50_ms"], 3),
        "p99": round(result["raygpu"]["p99_ms"] / result["plain_serve"]["p99_ms"], 3),
    }
    result["goal"] = {"p50": 1.2, "p99": 1.2}
    result["repetitions"] = args.repetitions
    result["params"] = {"requests": args.requests, "stages": 3}
    result["raw"] = runs
    print_table(
        "3-stage pipeline: raygpu (gateway + call core) vs plain Serve handles, medians of interleaved repetitions",
        [(n, f"{result[n]['p50_ms']:.2f}", f"{result[n]['p99_ms']:.2f}") for n in targets]
        + [("ratio (goal <= 1.2x)", f"{result['ratios']['p50']:.2f}x", f"{result['ratios']['p99']:.2f}x")],
        ("path", "p50 ms", "p99 ms"),
    )
    write_json(args.json_path, result)


if __name__ == "__main__":
    main()
