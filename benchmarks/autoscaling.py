"""raygpu's scaling policy against the baselines on a real trace, same replay, same run.

    python -m benchmarks.autoscaling --trace ../shared/traces/azure_functions_2019_sample500/invocations.csv \
        --format azure2019 --json benchmarks/results/autoscaling.json

Replays are deterministic (seed 0), so one repetition is exact; `replay_s` is each policy's wall time.
"""

from __future__ import annotations

import argparse

from autoscaling.report import COLUMNS, table_rows
from autoscaling.simulator import SimulationParams, simulate
from autoscaling.traces import load_trace
from benchmarks.harness import print_table, write_json


def ratios(policies: dict) -> dict:
    me = policies["raygpu"]
    out = {}
    for name, other in policies.items():
        if name == "raygpu":
            continue
        out[name] = {
            "cold_start_rate": me["cold_start_rate"] / other["cold_start_rate"] if other["cold_start_rate"] else None,
            "idle_gpu_seconds": me["idle_gpu_seconds"] / other["idle_gpu_seconds"]
            if other["idle_gpu_seconds"]
            else None,
        }
    return out


def targets(policies: dict) -> dict:
    me, f60, f600, hybrid = (policies[k] for k in ("raygpu", "fixed_60s", "fixed_600s", "hybrid_histogram"))
    return {
        "cold_start_rate <= 0.5x fixed_60s with no more idle": me["cold_start_rate"] <= 0.5 * f60["cold_start_rate"]
        and me["idle_gpu_seconds"] <= f60["idle_gpu_seconds"],
        "idle <= 0.7x fixed_600s with no more cold starts": me["idle_gpu_seconds"] <= 0.7 * f600["idle_gpu_seconds"]
        and me["cold_start_rate"] <= f600["cold_start_rate"],
        "better than hybrid_histogram on both": me["idle_gpu_seconds"] < hybrid["idle_gpu_seconds"]
        and me["cold_start_rate"] < hybrid["cold_start_rate"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", required=True)
    parser.add_argument("--format", required=True, choices=["azure2019", "azure2021", "azurellm2023"])
    parser.add_argument("--start-time", type=float, default=30.0)
    parser.add_argument("--price", type=float, default=3.95)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()

    trace = load_trace(args.trace, args.format)
    result = simulate(trace, params=SimulationParams(start_time_s=args.start_time, usd_per_gpu_hour=args.price))
    result.pop("timelines", None)
    result["ratios_raygpu_over"] = ratios(result["policies"])
    result["targets_met"] = targets(result["policies"])
    print_table(
        f"{args.format}: {trace.invocations:,} calls, {len(trace.functions)} functions, "
        f"start time {args.start_time:g} s",
        [tuple(row) for row in table_rows(result)],
        ("policy", *(title for _, title, _ in COLUMNS)),
    )
    print_table(
        "raygpu / baseline",
        [
            (
                name,
                f"{r['cold_start_rate']:.2f}x" if r["cold_start_rate"] is not None else "-",
                f"{r['idle_gpu_seconds']:.2f}x" if r["idle_gpu_seconds"] is not None else "-",
            )
            for name, r in result["ratios_raygpu_over"].items()
        ],
        ("baseline", "cold-start rate", "idle GPU-s"),
    )
    for target, met in result["targets_met"].items():
        print(f"  {'met ' if met else 'MISS'}  {target}")
    write_json(args.json_path, result)


if __name__ == "__main__":
    main()
