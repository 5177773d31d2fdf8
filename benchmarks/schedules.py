"""A scheduled function against the two ways to run the same job without a schedule, same cluster,
same run: how long from the moment a run is due until the user's code starts, and the idle
GPU-seconds each run costs (from the meter's ledger).

- scheduled: `schedule=raygpu.Period(seconds=P)`; the policy starts a replica one measured start
  before each due time and scales to zero after the run.
- at zero: the same function without a schedule, called at the same moments, at zero replicas
  (a short scaledown window; each call waits until the function is at zero).
- keep-alive: the same function called at the same moments with a fixed keep-alive just longer than
  the period (`scaledown_window=P+10`): the latency of a warm replica, paid for with idle time.

    python -m benchmarks.schedules --json benchmarks/results/schedules.json [--period 30] [--runs 5]

Reported: the median over runs of due -> code latency per path, idle GPU-seconds per run, and the
ratios of the scheduled function's against each baseline's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from benchmarks.harness import median, print_table, private_cluster, write_json

WORK_S = 1.0

APP_SOURCE = """
import time

import raygpu

app = raygpu.App("sched")
PERIOD_S = {period}


def work() -> float:
    started = time.time()
    time.sleep({work})
    return started


@app.function(gpu=1, schedule=raygpu.Period(seconds=PERIOD_S))
def scheduled() -> float:
    return work()


@app.function(gpu=1, scaledown_window=2)
def at_zero() -> float:
    return work()


@app.function(gpu=1, scaledown_window=PERIOD_S + 10)
def kept() -> float:
    return work()
"""


def app_sources(work: Path) -> dict[str, str]:
    """The app this benchmark deploys, by file name (for checks that need no cluster)."""
    return {"sched_app.py": APP_SOURCE.format(period=30.0, work=WORK_S)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--period", type=float, default=30.0, help="seconds between runs (at least 10)")
    parser.add_argument("--runs", type=int, default=5, help="runs measured per path")
    return parser


def running_replicas(app: str, function: str) -> int:
    from raygpu.ops.deploy import app_status

    for f in app_status(app).functions:
        if f.name == function:
            return f.replicas.running + f.replicas.starting
    return 0


def idle_gpu_seconds(app: str, function: str, since: float, until: float) -> float:
    """Idle GPU-seconds the ledger billed `function` within [since, until]."""
    import ray

    from billing.constants import METER_ACTOR_NAME, METER_NAMESPACE

    meter = ray.get_actor(METER_ACTOR_NAME, namespace=METER_NAMESPACE)
    total = 0.0
    for iv in ray.get(meter.intervals.remote(app, function)):
        if iv["phase"] == "idle":
            overlap = min(iv["end"], until) - max(iv["start"], since)
            total += max(0.0, overlap) * iv["gpus"]
    return total


def main() -> None:
    args = build_parser().parse_args()
    period = max(10.0, args.period)
    with private_cluster(gpus=4) as info:
        from raygpu.ops.deploy import deploy_app, source_label
        from raygpu.ops.schedules import schedule_runs
        from raygpu.sdk.loader import load_app

        app_file = Path(tempfile.mkdtemp()) / "sched_app.py"
        app_file.write_text(APP_SOURCE.format(period=period, work=WORK_S))
        app, path, digest = load_app(str(app_file))
        deploy_app(app, source_label(path, digest))
        begun = time.time()
        latencies: dict[str, list[float]] = {"scheduled": [], "at_zero": [], "keep_alive": []}

        def call(function: str, due: float, into: str) -> None:
            time.sleep(max(0.0, due - time.time()))
            if into == "at_zero":  # a call at zero replicas: wait until the function is there
                while running_replicas("sched", "at_zero") > 0:
                    time.sleep(0.5)
                due = time.time()
            response = requests.post(f"{info.gateway_url}/sched/{function}", json={}, timeout=600)
            response.raise_for_status()
            latencies[into].append(response.json() - due)

        # the baselines are called at the scheduled function's due times (the keep-alive one from
        # one period earlier, so each measured call finds what its keep-alive kept)
        live_at = next(a for a in load_runs_live_at())
        dues = [live_at + k * period for k in range(1, args.runs + 1)]
        callers = [threading.Thread(target=call, args=("kept", live_at, "warmup"))]
        latencies["warmup"] = []
        callers += [threading.Thread(target=call, args=("kept", due, "keep_alive")) for due in dues]
        callers += [threading.Thread(target=call, args=("at_zero", due + period / 2, "at_zero")) for due in dues]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        until = dues[-1] + WORK_S + 2
        time.sleep(max(0.0, until + 1 - time.time()))

        def succeeded() -> list:
            return [r for r in schedule_runs("sched", "scheduled", 100) if r.status == "succeeded"]

        deadline = time.monotonic() + 120
        while len(succeeded()) < args.runs and time.monotonic() < deadline:
            time.sleep(1)
        runs = sorted(succeeded(), key=lambda r: r.due_at or 0)[: args.runs]
        for r in runs:
            result = requests.get(f"{info.gateway_url}/sched/calls/{r.call_id}", timeout=30).json()["result"]
            latencies["scheduled"].append(result - r.due_at)
        window = (dues[0] - period, until)
        idle = {
            "scheduled": idle_gpu_seconds("sched", "scheduled", *window) / max(1, len(runs)),
            "keep_alive": idle_gpu_seconds("sched", "kept", *window) / max(1, len(dues)),
            "at_zero": idle_gpu_seconds("sched", "at_zero", *window) / max(1, len(dues)),
        }
        print(f"measured {len(runs)} scheduled runs in {time.time() - begun:.0f} s", file=sys.stderr)

    paths = ("scheduled", "at_zero", "keep_alive")
    result: dict = {
        name: {
            "due_to_code_ms": round(median(latencies[name]) * 1000, 1),
            "idle_gpu_s_per_run": round(idle[name], 2),
        }
        for name in paths
    }
    result["ratios"] = {
        "latency_vs_at_zero": round(result["scheduled"]["due_to_code_ms"] / result["at_zero"]["due_to_code_ms"], 3),
        "latency_vs_keep_alive": round(
            result["scheduled"]["due_to_code_ms"] / max(result["keep_alive"]["due_to_code_ms"], 0.1), 3
        ),
        "idle_vs_keep_alive": round(
            result["scheduled"]["idle_gpu_s_per_run"] / max(result["keep_alive"]["idle_gpu_s_per_run"], 0.01), 3
        ),
    }
    result["params"] = {"period_s": period, "runs": args.runs, "work_s": WORK_S}
    result["raw"] = latencies
    print_table(
        f"A job every {period:g} s: scheduled (pre-warmed) vs called at zero vs a fixed keep-alive, medians of "
        f"{args.runs} runs",
        [(n, f"{result[n]['due_to_code_ms']:.1f}", f"{result[n]['idle_gpu_s_per_run']:.2f}") for n in paths]
        + [
            (
                "scheduled / at zero",
                f"{result['ratios']['latency_vs_at_zero']:.2f}x",
                "",
            ),
            (
                "scheduled / keep-alive",
                f"{result['ratios']['latency_vs_keep_alive']:.2f}x",
                f"{result['ratios']['idle_vs_keep_alive']:.2f}x",
            ),
        ],
        ("path", "due -> code ms", "idle GPU-s per run"),
    )
    write_json(args.json_path, result)


def load_runs_live_at() -> list[float]:
    """When the deployed version went live (its Period counts from then)."""
    import ray

    from raygpu.sdk.control import store

    return [ray.get(store().live_app.remote("sched"))["live_at"]]


if __name__ == "__main__":
    main()
