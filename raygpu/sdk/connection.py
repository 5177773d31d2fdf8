"""Attaching this process to the raygpu cluster (--address, RAYGPU_ADDRESS or the local one), and
detaching it (its call loop and the Serve handles that loop opened stop first)."""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

from deployments import constants
from raygpu.sdk.errors import NoClusterError
from raygpu.sdk.home import local_cluster_alive, read_local_cluster

ADDRESS_ENV = "RAYGPU_ADDRESS"


def resolve_address(address: str | None = None) -> tuple[str, bool]:
    """(address, is_local): --address, then RAYGPU_ADDRESS, then the local cluster."""
    address = address or os.environ.get(ADDRESS_ENV)
    if address:
        return address, False
    cluster = read_local_cluster()
    if cluster and local_cluster_alive(cluster):
        return cluster.address, True
    raise NoClusterError(
        "no raygpu cluster is running: start one with `raygpu up --local`, or point at a cluster with "
        f"--address / {ADDRESS_ENV}=HOST:PORT"
    )


def connect(address: str | None = None) -> None:
    """Attach this process to the raygpu cluster (once per process)."""
    import ray

    if ray.is_initialized():
        return
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    resolved, local = resolve_address(address)
    if local:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(
            address=resolved,
            namespace=constants.RAY_NAMESPACE,
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as exc:
        raise NoClusterError(
            f"cannot reach the Ray cluster at {resolved}: {exc}; start one with `raygpu up --local` "
            f"or check --address / {ADDRESS_ENV}"
        ) from None
    # Runs before Ray's own exit hook (registered by ray.init): a handle's router thread left running
    # past ray.shutdown would call a Ray API, which auto-starts a new local Ray instance.
    atexit.register(disconnect)
    ray_messages_to_stderr()


def ray_messages_to_stderr() -> None:
    """Send what Ray prints on a driver (the raylet's warnings broadcast to every driver) to stderr:
    Ray prints them on stdout, where the CLI writes its JSON and JSONL. Without the Ray internal
    this relies on, they stay on stdout."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_raygpu_to_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr._raygpu_to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def disconnect() -> None:
    """Stop the call loop and the routers of this process's handles, then detach from the cluster."""
    import ray

    from raygpu.sdk import call_loop

    call_loop.shutdown()
    if ray.is_initialized():
        ray.shutdown()
