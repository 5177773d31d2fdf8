"""raygpu's scaling policy against the baselines, the fixed keep-alive frontier and the oracle, on
real traces and synthetic families, same replay, same run.

    python -m benchmarks.autoscaling --trace ../shared/traces/azure_functions_2019_sample500/invocations.csv \\
        --format azure2019 [--half odd] --json benchmarks/results/autoscaling.json
    python -m benchmarks.autoscaling --all --traces-dir ../shared/traces --json benchmarks/results/autoscaling_all.json

Replays are deterministic (seed 0), so one repetition is exact; `replay_s` is each policy's wall time.
For each trace: every policy's cold-start rate and idle GPU-seconds, the frontier (fixed_K for K from
10 s to 30 min), raygpu's idle against the frontier at its own cold-start rate, each policy's idle
over the oracle's (no cold start, each idle gap costs min(gap, start time)), and which baselines
beat raygpu on both axes. Knobs are chosen on the 2019 sample's even half; report the odd half.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoscaling.baselines import FixedKeepAlive
from autoscaling.frontier import FRONTIER_KEEP_ALIVES_S, dominated_by, frontier_points, oracle, position
from autoscaling.report import COLUMNS, table_rows
from autoscaling.simulator import SimulationParams, simulate
from autoscaling.synthetic import FAMILIES, STRUCTURED, synthetic_trace
from autoscaling.traces import FORMATS, HALVES, Trace, load_trace
from benchmarks.harness import print_table, write_json


def ratios(policies: dict) -> dict:
    me = policies["raygpu"]
    out = {}
    for name, other in policies.items():
        if name == "raygpu" or name.startswith("frontier_"):
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


def evaluate(trace: Trace, params: SimulationParams, structured: bool) -> dict[str, Any]:
    """Every policy and the frontier's keep-alives on one trace; where raygpu stands."""
    frontier = {
        f"frontier_{int(k)}s": (lambda c, k=k: FixedKeepAlive(c, k, f"frontier_{int(k)}s"))
        for k in FRONTIER_KEEP_ALIVES_S
    }
    result = simulate(trace, params=params, extra_policies=frontier, policies=None)
    result.pop("timelines", None)
    policies = result["policies"]
    points = frontier_points({k: policies.pop(f"frontier_{int(k)}s") for k in FRONTIER_KEEP_ALIVES_S})
    limit = oracle(trace, params.start_time_s, params.gpus_per_replica)
    result["frontier"] = points
    result["oracle"] = limit
    result["positions"] = {name: position(r, points, limit) for name, r in policies.items()}
    me = result["positions"]["raygpu"]
    below = me["below_frontier_by"]
    result["goals"] = {
        "no baseline better on both axes": not dominated_by(policies, "raygpu"),
        "on or below the frontier": below is not None and below >= 0,
        **({"20% below the frontier (structured family)": below is not None and below >= 0.2} if structured else {}),
    }
    result["better_on_both_axes"] = dominated_by(policies, "raygpu")
    result["ratios_raygpu_over"] = ratios(policies)
    return result


def discover(traces_dir: Path, half: str | None) -> list[tuple[str, Trace]]:
    """The traces of a directory laid out as shared/traces (one folder per dataset), by format."""
    found: list[tuple[str, Trace]] = []
    for path in sorted(traces_dir.rglob("*.csv")):
        header = path.open().readline()
        if header.startswith("HashOwner,HashApp,HashFunction,Trigger"):
            found.append(
                (f"{path.parent.name}{f' ({half} half)' if half else ''}", load_trace(path, "azure2019", half=half))
            )
        elif header.startswith("app,func,end_timestamp,duration"):
            found.append((path.parent.name, load_trace(path, "azure2021")))
        elif header.startswith("TIMESTAMP,ContextTokens,GeneratedTokens"):
            found.append((f"{path.parent.name}/{path.stem}", load_trace(path, "azurellm2023")))
    return found


def summary_row(label: str, result: dict[str, Any]) -> tuple[str, ...]:
    policies, me = result["policies"], result["positions"]["raygpu"]
    ratio = me["idle_over_frontier"]
    return (
        label,
        f"{policies['raygpu']['cold_start_rate']:.2%} / {policies['raygpu']['idle_gpu_seconds']:,.0f}",
        f"{policies['knative']['cold_start_rate']:.2%} / {policies['knative']['idle_gpu_seconds']:,.0f}",
        f"{policies['fixed_60s']['cold_start_rate']:.2%} / {policies['fixed_60s']['idle_gpu_seconds']:,.0f}",
        "-"
        if ratio is None
        else f"{ratio:.2f}x" + (" (fewer cold starts than all)" if me["fewer_cold_starts_than_any_keep_alive"] else ""),
        f"{me['idle_over_oracle']:.2f}x" if me["idle_over_oracle"] else "-",
        ", ".join(result["better_on_both_axes"]) or "none",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", help="one trace file (with --format)")
    parser.add_argument("--format", choices=FORMATS)
    parser.add_argument("--all", action="store_true", help="every trace of --traces-dir and every synthetic family")
    parser.add_argument("--traces-dir", default=None, help="a folder laid out as shared/traces")
    parser.add_argument("--half", choices=HALVES, default=None, help="azure2019: only this half of the functions")
    parser.add_argument("--families", default=",".join(FAMILIES), help="synthetic families for --all (comma list)")
    parser.add_argument("--start-time", type=float, default=30.0)
    parser.add_argument("--price", type=float, default=3.95)
    parser.add_argument("--json", dest="json_path", default=None)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    params = SimulationParams(start_time_s=args.start_time, usd_per_gpu_hour=args.price)

    if not args.all:
        if not args.trace or not args.format:
            parser.error("give --trace and --format, or --all [--traces-dir DIR]")
        trace = load_trace(args.trace, args.format, half=args.half)
        result = evaluate(trace, params, structured=False)
        result["targets_met"] = targets(result["policies"])
        print_table(
            f"{args.format}: {trace.invocations:,} calls, {len(trace.functions)} functions, "
            f"start time {args.start_time:g} s",
            [tuple(row) for row in table_rows(result)],
            ("policy", *(title for _, title, _ in COLUMNS)),
        )
        print_table("raygpu against the frontier and the oracle", [summary_row(args.format, result)], HEADER)
        for target, met in {**result["targets_met"], **result["goals"]}.items():
            print(f"  {'met ' if met else 'MISS'}  {target}")
        write_json(args.json_path, result)
        return

    runs: list[tuple[str, Trace, bool]] = []
    if args.traces_dir:
        runs += [(label, trace, False) for label, trace in discover(Path(args.traces_dir), args.half)]
    for family in [f for f in args.families.split(",") if f]:
        runs.append((f"synthetic:{family}", synthetic_trace(family), family in STRUCTURED))
    results = {}
    for label, trace, structured in runs:
        results[label] = evaluate(trace, params, structured)
        print(f"  {label}: done ({trace.invocations:,} calls)", flush=True)
    print_table(
        f"raygpu on every trace (cold-start rate / idle GPU-s; start time {args.start_time:g} s)",
        [summary_row(label, r) for label, r in results.items()],
        HEADER,
    )
    missed = [(label, goal) for label, r in results.items() for goal, met in r["goals"].items() if not met]
    for label, goal in missed:
        print(f"  MISS  {label}: {goal}")
    write_json(args.json_path, {"params": {"start_time_s": args.start_time, "half": args.half}, "traces": results})


HEADER = (
    "trace",
    "raygpu",
    "knative",
    "fixed_60s",
    "raygpu idle / frontier",
    "raygpu idle / oracle",
    "better on both axes",
)


if __name__ == "__main__":
    main()
