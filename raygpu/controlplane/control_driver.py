"""The control-plane driver of a local cluster: a long-lived Ray driver that installs raygpu's
control plane (store, meter, Serve, gateway, warm pools) and stays connected.

Serve's controller, and so every replica it creates, belongs to the job of the driver that
started Serve. Ray keeps pre-started (warm) workers only for a live job, so the driver that starts
Serve must outlive `raygpu up`: this process does, until `raygpu down` stops it.

    python -m raygpu.controlplane.control_driver --address HOST:PORT --ready-file F --temp-dir D --config JSON
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--temp-dir", required=True, help="the cluster's temp dir (how `raygpu down` finds us)")
    parser.add_argument("--config", required=True, help="the ControlPlaneOptions, as JSON")
    args = parser.parse_args()
    ready = Path(args.ready_file)
    # a cluster's admin credential (its key, when the operator gave one, and its hash) comes on stdin
    line = sys.stdin.readline() if not sys.stdin.closed else ""
    cluster = json.loads(line) if line.strip() else None
    try:
        from raygpu.controlplane.control_plane import install_control_plane
        from raygpu.controlplane.options import ControlPlaneOptions
        from raygpu.sdk.connection import connect
        from raygpu.sdk.home import claim_state_dir

        options = ControlPlaneOptions.model_validate_json(args.config)
        claim_state_dir(options.state_dir, args.address, os.getpid())
        connect(args.address)
        out = install_control_plane(options, cluster if isinstance(cluster, dict) else None)
        ready.write_text(json.dumps({"ok": True, **out}))
    except BaseException as exc:  # report why, then exit: `raygpu up` prints it
        ready.write_text(
            json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        )
        sys.exit(1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from raygpu.controlplane import control_plane

    watch_nodes(stop, options.warm_pool, control_plane.ACTING_CREDENTIAL, options.warm_memory)


def watch_nodes(
    stop: threading.Event,
    warm_pool: dict[str, int] | int,
    credential: str | None = None,
    warm_memory: int | None = None,
) -> None:
    """Until stopped: give a warm pool to every GPU node a replica lands on, including nodes that
    joined after `raygpu up` (an autoscaler launch, a restarted node)."""
    import logging

    from deployments import constants
    from deployments.node.warm_pool import nodes_without_pool, parse_pool_sizes, start_pools_on
    from raygpu.ops.deploy import replica_nodes

    sizes = parse_pool_sizes(warm_pool)
    while not stop.wait(constants.NODE_WATCH_INTERVAL_S):
        if not any(sizes.values()):
            continue
        try:
            missing = nodes_without_pool()
            if missing:  # only then ask Serve where replicas run (its details cost the controller)
                busy = replica_nodes() & set(missing)
                if busy:
                    start_pools_on(sizes, busy, credential, warm_memory)
        except Exception as exc:  # the GCS or Serve's controller is restarting: try again next round
            logging.getLogger(__name__).warning("raygpu: watching nodes failed: %s", exc)


if __name__ == "__main__":
    main()
