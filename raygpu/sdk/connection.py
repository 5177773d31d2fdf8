"""Attaching this process to the raygpu cluster (--address, RAYGPU_ADDRESS or the local one),
and the Serve handles it opens, closed before it detaches."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from deployments import constants
from raygpu.sdk.errors import NoClusterError
from raygpu.sdk.home import local_cluster_alive, read_local_cluster

ADDRESS_ENV = "RAYGPU_ADDRESS"

_handles: dict[tuple[str, str], Any] = {}
_handles_lock = threading.Lock()


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


def serve_handle(serve_app: str, deployment: str) -> Any:
    """A Serve handle to a deployment, opened once per process and ready to call from any thread.
    It is opened and its router started under a lock: `map` calls from many threads at once, and a
    handle's first calls racing would each start a router, all but one left running unclosed."""
    from ray import serve

    key = (serve_app, deployment)
    with _handles_lock:
        if key not in _handles:
            # .options() starts the handle's router now and returns a handle that shares it
            _handles[key] = serve.get_deployment_handle(deployment, app_name=serve_app).options()
        return _handles[key]


def disconnect() -> None:
    """Stop the routers of this process's handles, then detach from the cluster."""
    import ray

    while _handles:
        _, handle = _handles.popitem()
        try:
            handle.shutdown()
        except Exception:
            pass
    if ray.is_initialized():
        ray.shutdown()
