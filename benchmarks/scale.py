"""The control plane as functions pile up at zero: Serve controller and gateway CPU while idle, deploy
latency, `raygpu ls` latency, cold-call latency and head memory at N deployed functions, as ratios
to N = 1 of the same run.

    python -m benchmarks.scale [--sizes 1,100,300,1000] [--per-app 10] [--idle-s 20] [--park-after 10] --json OUT

Functions are trivial, CPU-only, at zero replicas, deployed as apps of `--per-app` functions into
one private local cluster, growing from the smallest size to the largest; each size is measured
once everything deployed has settled: controller CPU (the `ray::ServeController` process) over
`--idle-s` seconds, deploy latency (bulk: median of the last five app deploys before that size,
deployed back to back while earlier ones park; settled: median of three apps deployed into the
settled cluster, then stopped), `raygpu
ls` (the CLI, a fresh process each time, median of three), a cold call (median over three functions
never called before, through the gateway), and the resident memory of every process of the cluster.
Functions at rest leave Serve after `--park-after` seconds (deployments/parking.py; the cluster's
`raygpu up --park-after`): each size is measured once they have (or after `--settle-s` more), and its
cold calls are calls of parked functions. `--park-after 0` keeps every function in Serve (the
controller then works on each of them every tick).
`--profile-at N[,M]` also records a py-spy profile of the controller at that size (py-spy must be
installed: `pip install py-spy`), and a cProfile of the driver's last five deploys before that size
(where a deploy's wall time goes: which calls it waits on), both under the work directory.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from benchmarks.harness import median, print_table, private_cluster, write_json

APP_HEADER = 'import raygpu\n\napp = raygpu.App("{name}")\n'
FUNCTION_SOURCE = """

@app.function(scaledown_window=2)
def {name}(x: int = 0) -> int:
    return x
"""


def app_source(name: str, functions: int) -> str:
    return APP_HEADER.format(name=name) + "".join(FUNCTION_SOURCE.format(name=f"f{i}") for i in range(functions))


def app_sources(work: Path) -> dict[str, str]:
    """An app of the kind this benchmark deploys, by file name (for checks that need no cluster)."""
    return {"scale0.py": app_source("scale0", 3)}


def serve_processes(temp_dir: str) -> tuple[psutil.Process | None, list[psutil.Process], list[psutil.Process]]:
    """The cluster's Serve controller, its gateway replicas, and every process of the cluster."""
    from raygpu.sdk.home import cluster_processes

    everything = cluster_processes(temp_dir)
    controller, gateways = None, []
    for proc in everything:
        try:
            title = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::ServeController"):
            controller = proc
        elif title.startswith("ray::ServeReplica:raygpu-gateway"):
            gateways.append(proc)
    return controller, gateways, everything


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def idle_cpu(temp_dir: str, seconds: float) -> tuple[float, float]:
    """Fraction of a core the controller and the gateway replicas used over `seconds` of no traffic."""
    controller, gateways, _ = serve_processes(temp_dir)
    if controller is None:
        raise RuntimeError("no ray::ServeController process found in the cluster")
    before = (cpu_seconds([controller]), cpu_seconds(gateways), time.monotonic())
    time.sleep(seconds)
    wall = time.monotonic() - before[2]
    return (cpu_seconds([controller]) - before[0]) / wall, (cpu_seconds(gateways) - before[1]) / wall


def head_memory_mb(temp_dir: str) -> float:
    _, _, everything = serve_processes(temp_dir)
    total = 0
    for proc in everything:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def ls_seconds(repetitions: int = 3) -> float:
    raygpu_cli = shutil.which("raygpu") or str(Path(sys.executable).with_name("raygpu"))
    timings = []
    for _ in range(repetitions):
        started = time.perf_counter()
        subprocess.run([raygpu_cli, "ls"], check=True, capture_output=True, env=os.environ.copy(), timeout=300)
        timings.append(time.perf_counter() - started)
    return median(timings)


def wait_warm_pool(timeout_s: float = 60.0) -> None:
    """Until every warm pool holds its idle workers again, so that each cold call starts as the
    first one of a quiet cluster does (a pool refills in seconds after a replica takes a worker)."""
    from deployments.node.warm_pool import pool_stats

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = pool_stats()
        if all(len(p["idle"]) >= p["size"] or not p["available"] for p in stats):
            return
        time.sleep(0.5)


def cold_call_seconds(gateway_url: str, targets: list[str]) -> float:
    timings = []
    for target in targets:
        wait_warm_pool()
        started = time.perf_counter()
        response = requests.post(f"{gateway_url}/{target}", json={"x": 1}, timeout=300)
        response.raise_for_status()
        timings.append(time.perf_counter() - started)
    return median(timings)


def wait_parked(functions: int, timeout_s: float) -> int:
    """Wait until the parker holds `functions` functions out of Serve (or `timeout_s`); how many it does."""
    import ray

    from deployments.parking import get_parker

    deadline = time.monotonic() + timeout_s
    while True:
        parked = sum(len(names) for names in ray.get(get_parker().state.remote())["parked"].values())
        if parked >= functions or time.monotonic() >= deadline:
            return parked
        time.sleep(1.0)


def profile_controller(temp_dir: str, out: Path, seconds: int) -> str | None:
    """A py-spy profile of the controller (not paused while sampled); None when py-spy is missing
    or cannot profile it."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    controller, _, _ = serve_processes(temp_dir)
    if controller is None or not Path(py_spy).exists():
        return None
    command = [py_spy, "record", "--nonblocking", "--pid", str(controller.pid), "--duration", str(seconds)]
    try:
        subprocess.run(
            [*command, "--format", "raw", "--output", str(out)], check=True, capture_output=True, timeout=seconds + 60
        )
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
        print(f"  py-spy could not profile the controller ({exc}); going on without a profile", flush=True)
        return None
    return str(out)


def settled_deploy_seconds(work: Path, size: int, per_app: int, count: int = 3) -> float:
    """Median time to deploy an app of `per_app` functions into the settled cluster (nothing else
    deploying or parking); the probe apps are stopped again, so N stays as it was."""
    from raygpu.ops.deploy import deploy_app, source_label, stop_app
    from raygpu.sdk.loader import load_app

    timings, names = [], []
    for i in range(count):
        name = f"probe{size:05d}x{i}"
        path = work / f"{name}.py"
        path.write_text(app_source(name, per_app))
        app, app_path, digest = load_app(str(path))
        started = time.perf_counter()
        deploy_app(app, source_label(app_path, digest))
        timings.append(time.perf_counter() - started)
        names.append(name)
    for name in names:
        stop_app(name)
    return median(timings)


def deploy_profile_summary(profiler: cProfile.Profile, out: Path, lines: int = 40) -> str:
    """The driver's deploy profile by cumulative time, written to `out`."""
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(lines)
    out.write_text(text.getvalue())
    return str(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,100,300,1000", help="function counts to measure at, ascending")
    parser.add_argument("--per-app", type=int, default=10, help="functions per app")
    parser.add_argument("--idle-s", type=float, default=20.0, help="seconds of idle CPU measured per size")
    parser.add_argument("--settle-s", type=float, default=15.0, help="seconds waited after deploying, before measuring")
    parser.add_argument(
        "--park-after", type=float, default=10.0, help="seconds at rest before a function leaves Serve (0: never)"
    )
    parser.add_argument(
        "--profile-at", default="", help="sizes (comma-separated) to profile the controller and the deploys at"
    )
    parser.add_argument("--json", dest="json_path", default=None)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s})
    profile_sizes = {int(s) for s in args.profile_at.split(",") if s}
    if not sizes or sizes[0] < 1:
        parser.error("--sizes: positive function counts, e.g. 1,100,300,1000")
    if args.per_app < 1:
        parser.error("--per-app must be at least 1")

    # a long run stopped with SIGTERM still stops its cluster (the context manager's exit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="raygpu-scalebench-"))
    rows: list[dict[str, Any]] = []
    with private_cluster(gpus=0, park_after_s=args.park_after) as info:
        from raygpu.ops.deploy import deploy_app, source_label
        from raygpu.sdk.loader import load_app

        deployed = 0
        apps = 0
        deploy_times: list[float] = []
        never_called: list[str] = []
        for size in sizes:
            profiler = cProfile.Profile() if size in profile_sizes else None
            while deployed < size:
                count = min(args.per_app, size - deployed)
                name = f"scale{apps:04d}"
                path = work / f"{name}.py"
                path.write_text(app_source(name, count))
                app, app_path, digest = load_app(str(path))
                profiled = profiler is not None and deployed + count > size - 5 * args.per_app
                started = time.perf_counter()
                if profiled:
                    profiler.enable()
                deploy_app(app, source_label(app_path, digest))
                if profiled:
                    profiler.disable()
                deploy_times.append(time.perf_counter() - started)
                never_called += [f"{name}/f{i}" for i in range(count)]
                deployed += count
                apps += 1
            time.sleep(args.settle_s)
            # functions called before (the cold calls of smaller sizes) park once their plan allows
            waited_for = len(never_called)
            parked = wait_parked(waited_for, args.park_after + args.settle_s + 30.0) if args.park_after > 0 else 0
            controller_cpu, gateway_cpu = idle_cpu(info.temp_dir, args.idle_s)
            profile = None
            if profiler is not None:
                profile = {
                    "controller": profile_controller(info.temp_dir, work / f"controller-{size}.txt", int(args.idle_s)),
                    "deploys": deploy_profile_summary(profiler, work / f"deploys-{size}.txt"),
                }
            settled_deploy_s = settled_deploy_seconds(work, size, args.per_app)
            ls_s = ls_seconds()
            targets, never_called = never_called[:3], never_called[3:]
            cold_s = cold_call_seconds(info.gateway_url, targets) if targets else None
            row = {
                "functions": deployed,
                "apps": apps,
                "parked": parked,
                "controller_idle_core_fraction": controller_cpu,
                "gateway_idle_core_fraction": gateway_cpu,
                "deploy_s": median(deploy_times[-5:]),
                "deploy_settled_s": settled_deploy_s,
                "ls_s": ls_s,
                "cold_call_s": cold_s,
                "head_memory_mb": head_memory_mb(info.temp_dir),
                "profile": profile,
            }
            rows.append(row)
            print(f"  N={deployed}: {row}", flush=True)

    base = rows[0]
    for row in rows:
        row["ratios_to_smallest"] = {
            key: (row[key] / base[key] if base[key] else None)
            for key in ("deploy_s", "deploy_settled_s", "ls_s", "cold_call_s", "head_memory_mb")
            if row[key] is not None and base[key] is not None
        }
    print_table(
        f"the control plane at N functions at zero (apps of {args.per_app}; ratios to N={base['functions']}; "
        f"parking after {args.park_after:g} s)",
        [
            (
                str(r["functions"]),
                str(r["parked"]),
                f"{r['controller_idle_core_fraction']:.1%}",
                f"{r['gateway_idle_core_fraction']:.1%}",
                f"{r['deploy_s']:.2f} s ({r['ratios_to_smallest'].get('deploy_s', 0):.2f}x)",
                f"{r['deploy_settled_s']:.2f} s ({r['ratios_to_smallest'].get('deploy_settled_s', 0):.2f}x)",
                f"{r['ls_s']:.2f} s ({r['ratios_to_smallest'].get('ls_s', 0):.2f}x)",
                "-"
                if r["cold_call_s"] is None
                else f"{r['cold_call_s']:.2f} s ({r['ratios_to_smallest'].get('cold_call_s', 0):.2f}x)",
                f"{r['head_memory_mb']:,.0f} MB",
            )
            for r in rows
        ],
        (
            "N",
            "parked",
            "controller idle",
            "gateway idle",
            "deploy (bulk)",
            "deploy (settled)",
            "raygpu ls",
            "cold call",
            "head memory",
        ),
    )
    write_json(args.json_path, {"params": vars(args), "sizes": rows})


if __name__ == "__main__":
    main()
