"""How long a gateway replica's other connections wait while large bodies arrive: `/healthz` latency
during a flood of large call bodies, raygpu's body handling (a count before any parse, large bodies
parsed in body-check worker processes, passed on as JSON text) against the baseline of parsing every
body on the event loop, as the gateway did before. Each runs as the gateway runs it (uvicorn with the
gateway's config, in a process of its own); no Ray.

    python -m benchmarks.gateway_loop --json OUT [--bodies 8] [--mib 4] [--repetitions 3]

Two floods: JSON objects holding a large array of floats (accepted by both), and bodies of nested empty
lists (refused by both, raygpu before parsing). Reported per flood and server: the median over
repetitions of the probe's p50, p99 and worst latency, and the ratios raygpu / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from benchmarks.harness import median, percentile, print_table, write_json

PROBE_INTERVAL_S = 0.02


def _serve(mode: str, port: int) -> None:
    """A gateway-configured uvicorn server answering /healthz and parsing POST bodies as `mode` does."""
    from deployments.gateway.body import BodyError, parse_arguments
    from deployments.gateway.body_checks import BodyCheckPool
    from deployments.gateway.http import (
        EmbeddedServer,
        error_response,
        gateway_config,
        json_response,
        reuse_port_socket,
    )

    pool = BodyCheckPool()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await json_response(200, {"status": "ok"})(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = await pool.arguments(raw) if mode == "raygpu" else parse_arguments(raw)
        except BodyError as exc:
            await error_response(400, exc.error_type, exc.message)(scope, receive, send)
            return
        await json_response(200, {"parsed": type(body).__name__})(scope, receive, send)

    config = gateway_config(app, max_connections=4096, header_timeout_s=30, keep_alive_s=30)
    server = EmbeddedServer(config)
    asyncio.run(server._serve([reuse_port_socket("127.0.0.1", port)]))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flood(port: int, body: bytes, bodies: int) -> dict[str, float]:
    """Post `bodies` bodies at once while probing /healthz; the probe's latencies in ms."""
    url = f"http://127.0.0.1:{port}"
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        session = requests.Session()
        while not stop.is_set():
            started = time.perf_counter()
            session.get(f"{url}/healthz", timeout=60)
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(PROBE_INTERVAL_S)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(bodies) as posters:
            statuses = list(
                posters.map(
                    lambda _: (
                        requests.post(
                            url, data=body, headers={"Content-Type": "application/json"}, timeout=300
                        ).status_code
                    ),
                    range(bodies),
                )
            )
    finally:
        stop.set()
        prober.join()
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "answers": sorted(set(statuses)),
    }


def run(bodies: int, mib: float, repetitions: int) -> dict[str, Any]:
    size = int(mib * 2**20)
    floods = {
        "floats": json.dumps({"values": [0.125] * (size // 7)}).encode(),
        "nested_lists": b'{"values": [' + b"[]," * (size // 3) + b"[]]}",
    }
    context = multiprocessing.get_context("spawn")
    results: dict[str, Any] = {"bodies": bodies, "mib": mib, "repetitions": repetitions, "floods": {}}
    for name, body in floods.items():
        per_mode: dict[str, dict[str, float]] = {}
        for mode in ("baseline", "raygpu"):
            port = _free_port()
            server = context.Process(target=_serve, args=(mode, port), daemon=True)
            server.start()
            deadline = time.monotonic() + 30
            while True:
                try:
                    requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            try:
                runs = [flood(port, body, bodies) for _ in range(repetitions)]
            finally:
                server.terminate()
                server.join(10)
            per_mode[mode] = {key: median([r[key] for r in runs]) for key in ("p50_ms", "p99_ms", "max_ms")} | {
                "answers": runs[-1]["answers"]
            }
        per_mode["ratio"] = {
            key: per_mode["raygpu"][key] / per_mode["baseline"][key] if per_mode["baseline"][key] else float("nan")
            for key in ("p50_ms", "p99_ms", "max_ms")
        }
        results["floods"][name] = per_mode
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bodies", type=int, default=8, help="large bodies posted at once")
    parser.add_argument("--mib", type=float, default=4.0, help="size of each body")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--json", dest="json_path", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args.bodies, args.mib, args.repetitions)
    write_json(args.json_path, result)
    rows = []
    for name, per_mode in result["floods"].items():
        for mode in ("baseline", "raygpu"):
            m = per_mode[mode]
            rows.append(
                (name, mode, f"{m['p50_ms']:.1f}", f"{m['p99_ms']:.1f}", f"{m['max_ms']:.1f}", str(m["answers"]))
            )
        r = per_mode["ratio"]
        rows.append((name, "raygpu/baseline", f"{r['p50_ms']:.2f}x", f"{r['p99_ms']:.2f}x", f"{r['max_ms']:.2f}x", ""))
    print_table(
        f"/healthz latency while {args.bodies} bodies of {args.mib:g} MiB arrive (median of {args.repetitions})",
        rows,
        ("flood", "server", "p50 ms", "p99 ms", "max ms", "answers"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
