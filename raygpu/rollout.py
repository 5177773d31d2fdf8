"""Rolling a new version out beside the live one: each version is its own Serve application, so a
version that cannot start is found before it takes traffic and removed while the live one keeps
serving (the same side-by-side versions an A/B split routes between).

A version is checked through its first replicas when a function keeps `min_containers > 0`, and
through a start check (one replica started, then stopped) for every changed function with
`raygpu deploy --check`."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import ray
from ray import serve

from deployments import constants
from deployments.replicas.start_check import start_checks
from deployments.serve_apps import app_names, app_state
from deployments.spec import FunctionSpec, version_app_prefix
from raygpu.errors import DeployError

Unit = tuple[FunctionSpec, bytes, str | None]


def digest_of(spec: FunctionSpec, payload: bytes) -> str:
    """What identifies a function's deployable content: its spec and its pickled code."""
    return hashlib.sha256(spec.model_dump_json().encode() + b"\0" + payload).hexdigest()


def functions_to_check(
    specs: dict[str, FunctionSpec], digests: dict[str, str], previous: dict[str, str], check: bool
) -> tuple[set[str], set[str]]:
    """(functions checked through the replicas they keep running, functions given a start check)."""
    kept_running = {name for name, spec in specs.items() if spec.min_containers > 0}
    start_checked = {
        name for name in specs if check and name not in kept_running and digests[name] != previous.get(name)
    }
    return kept_running, start_checked


def warm_handoff(running: dict[str, int], specs: dict[str, FunctionSpec], free_gpus: float) -> dict[str, int]:
    """How many replicas each function of a new version starts with: as many as the live version
    runs, as far as free GPUs allow (the live version keeps its own until the switch)."""
    initial: dict[str, int] = {}
    for name, spec in specs.items():
        wanted = min(running.get(name, 0), spec.max_containers)
        request = spec.gpu_request
        if request is not None and wanted > spec.min_containers:
            extra = int(free_gpus // request.count) if request.count else wanted
            wanted = min(wanted, spec.min_containers + extra)
            free_gpus -= max(wanted - spec.min_containers, 0) * request.count
        initial[name] = max(wanted, spec.min_containers)
    return initial


def running_replicas(serve_app: str) -> dict[str, int]:
    """Running replicas per deployment of a Serve application (none when it does not exist)."""
    from ray.serve.context import _get_global_client

    try:
        details = _get_global_client().get_serve_details()
    except Exception:
        return {}
    app = details.get("applications", {}).get(serve_app, {})
    return {
        name: sum(1 for r in deployment.get("replicas", []) if str(r.get("state")).endswith("RUNNING"))
        for name, deployment in app.get("deployments", {}).items()
    }


def start(application: Any, serve_app: str) -> None:
    serve._run(application, _blocking=False, name=serve_app, route_prefix=None)


def wait_until_running(serve_app: str, wait_s: float) -> None:
    """Block until the Serve application runs; DeployError with Serve's reason when it fails or
    does not get there in time (replicas that cannot be placed, a start that hangs)."""
    deadline = time.monotonic() + wait_s
    last = ""
    while time.monotonic() < deadline:
        status = app_state(serve_app)
        if status.state != "NOT_STARTED":
            if status.state == "RUNNING":
                return
            last = "; ".join(status.messages)
            if status.state in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise DeployError(f"the new version did not start: {last or status.state}")
        time.sleep(0.25)
    raise DeployError(
        f"the new version did not start within {wait_s:g} s"
        + (f": {last}" if last else "")
        + " (the live version keeps serving; `raygpu status` shows it)"
    )


def startup_errors_of_running(serve_app: str, names: set[str], wait_s: float) -> dict[str, str]:
    """The startup error of each named deployment's replicas in a running Serve application."""
    errors: dict[str, str] = {}
    for name in sorted(names):
        handle = serve.get_deployment_handle(name, app_name=serve_app)
        try:
            error = handle.start_check.remote().result(timeout_s=wait_s)
        finally:
            handle.shutdown()  # its router would otherwise push metrics on after the driver detaches
        if error:
            errors[name] = error
    return errors


def run_start_checks(
    app: str, version: int, units: list[Unit], worker_resource: str | None, wait_s: float
) -> dict[str, str]:
    """Start one replica of each unit outside Serve, wait for it to load and stop; the errors."""
    checks = start_checks(app, version, units, worker_resource)
    errors: dict[str, str] = {}
    try:
        for name, (_, ref) in checks:
            try:
                error = ray.get(ref, timeout=wait_s)
            except ray.exceptions.GetTimeoutError:
                error = (
                    f"its replica did not start within {wait_s:g} s (the cluster may lack the resources it asks for)"
                )
            except ray.exceptions.RayError as exc:
                error = f"its replica failed: {exc}"
            if error:
                errors[name] = error
    finally:
        for _, (actor, _) in checks:
            ray.kill(actor, no_restart=True)
    return errors


def retire_versions(app: str, keep: str) -> list[str]:
    """Delete the Serve applications of every other version of `app` (their replicas finish their
    calls first); return their names."""
    prefix = version_app_prefix(app)
    legacy = f"{constants.USER_APP_PREFIX}{app}"
    retired = [name for name in app_names() if (name.startswith(prefix) or name == legacy) and name != keep]
    for name in retired:
        serve.delete(name, _blocking=False)
    return retired
