"""Shared pieces of the ratio benchmarks: a private local cluster, load loops, medians, tables."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests


@contextmanager
def private_cluster(
    gpus: int = 2,
    include_dashboard: bool = False,
    fake_nodes: str | None = None,
    node_idle_timeout_s: float = 60.0,
    park_after_s: float | None = None,
    warm_pool: dict[str, int] | int | None = None,
) -> Iterator[Any]:
    """A local raygpu cluster in a private RAYGPU_HOME on a free port, stopped by its pids on exit;
    `fake_nodes` (e.g. "A10G:1") adds GPU pools from zero nodes (Ray's fake multi-node autoscaler)."""
    home = tempfile.mkdtemp(prefix="raygpu-bench-")
    os.environ["RAYGPU_HOME"] = home
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAYGPU_ADDRESS", None)
    from deployments.engines.model_stage import DEFAULT_STAGE_DIR, STAGE_DIR_ENV

    # models its vLLM replicas stage in node memory, apart from any other cluster's on the machine
    os.environ[STAGE_DIR_ENV] = f"{DEFAULT_STAGE_DIR}-{Path(home).name}"
    from raygpu.controlplane.local_cluster import free_port, local_options, start_local, stop_local
    from raygpu.ops.capacity import parse_fake_nodes

    options = local_options(
        http_port=free_port(),
        **({} if park_after_s is None else {"park_after_s": park_after_s}),
        **({} if warm_pool is None else {"warm_pool": warm_pool}),
    )
    info = start_local(
        options,
        gpus=gpus,
        include_dashboard=include_dashboard,
        fake_nodes=parse_fake_nodes(fake_nodes) if fake_nodes else None,
        node_idle_timeout_s=node_idle_timeout_s,
    )
    try:
        yield info
    finally:
        stop_local()


def sequential_latencies_ms(call: Callable[[requests.Session], None], count: int) -> list[float]:
    session = requests.Session()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        call(session)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def concurrent_rps(call: Callable[[requests.Session], None], clients: int, duration_s: float) -> float:
    stop_at = time.perf_counter() + duration_s
    counts = [0] * clients

    def worker(index: int) -> None:
        session = requests.Session()
        while time.perf_counter() < stop_at:
            call(session)
            counts[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_json(path: str | None, result: dict[str, Any]) -> None:
    text = json.dumps(result, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    print(text)


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
