"""The one owner of raygpu's Serve applications: building and running a version's application, the
options it was built with (kept in the store so a rebuild changes no other deployment), deleting
it, and every query raygpu makes of Serve's controller. Serve's private API is used here and
nowhere else: when it changes, this file changes.

Queries go one application at a time: `serve.status()` and the instance details build every
application's full record (configs, replicas, topology) on the controller and validate it in the
driver, which grows with every function deployed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray
from pydantic import BaseModel, Field

from deployments import constants
from deployments.spec import DeployedFunction


def _serve() -> Any:
    """Ray Serve, imported when first used: the CLI's commands that only read the store do not
    pay for its import."""
    from ray import serve

    return serve


def _client() -> Any:
    from ray.serve.context import _get_global_client

    return _get_global_client()


class ServeAppOptions(BaseModel):
    """How a version's Serve application was built, kept in the store (setting `options_key`) so
    that building it again with functions added or removed gives every other deployment the very
    same options (Serve would otherwise restart it)."""

    metered: bool = True
    initial_replicas: dict[str, int] = Field(default_factory=dict)
    worker_resource: str | None = None
    # functions whose replicas run in their app unit's runtime env (a node holds a warm worker of it)
    app_workers: list[str] = Field(default_factory=list)


def options_key(serve_app: str) -> str:
    """The store setting that keeps a version application's ServeAppOptions."""
    return f"serve_app_options:{serve_app}"


def options_from(saved: Any) -> ServeAppOptions:
    """Options as the store kept them (the defaults where it kept none)."""
    return ServeAppOptions.model_validate(saved) if isinstance(saved, dict) else ServeAppOptions()


def build_version(
    app: str,
    version: int,
    functions: list[DeployedFunction],
    payloads: dict[str, bytes],
    options: ServeAppOptions,
    only: set[str] | None = None,
) -> Any:
    """The Serve application of a recorded version from what the store keeps (specs, digests,
    code), with the deployments of `only` (default: every function), each versioned by its digest."""
    chosen = [f for f in functions if only is None or f.spec.name in only]
    missing = [f.spec.name for f in chosen if f.spec.name not in payloads]
    if missing:
        raise ValueError(f"{app} v{version}: the store has no code for {', '.join(missing)}")
    from deployments.replicas.application import build_app_application

    return build_app_application(
        app,
        version,
        [(f.spec, payloads[f.spec.name], f.accelerator) for f in chosen],
        constants.STORE_ACTOR_NAME,
        constants.RAY_NAMESPACE,
        metered=options.metered,
        initial_replicas=options.initial_replicas,
        worker_resource=options.worker_resource,
        versions={f.spec.name: f.digest for f in chosen if f.digest},
        app_workers=set(options.app_workers),
    )


def run_version(
    serve_app: str,
    app: str,
    version: int,
    functions: list[DeployedFunction],
    payloads: dict[str, bytes],
    options: ServeAppOptions,
    only: set[str] | None = None,
) -> None:
    """Build a version's application and hand it to Serve without waiting (see wait_until_running)."""
    application = build_version(app, version, functions, payloads, options, only)
    _serve()._run(application, _blocking=False, name=serve_app, route_prefix=None)


def delete_app(serve_app: str, blocking: bool = False) -> None:
    """Delete a Serve application (its replicas finish their calls first)."""
    _serve().delete(serve_app, _blocking=blocking)


@dataclass(frozen=True)
class ServeAppState:
    state: str  # Serve's ApplicationStatus value: NOT_STARTED, DEPLOYING, RUNNING, DEPLOY_FAILED, ...
    messages: list[str]  # the application's and its deployments' non-empty status messages


def app_state(serve_app: str) -> ServeAppState:
    """One application's status (NOT_STARTED when Serve does not know it)."""
    overview = _client().get_serve_status(serve_app)
    status = overview.app_status
    state = str(getattr(status.status, "value", status.status))
    messages = [status.message] + [d.message for d in overview.deployment_statuses]
    return ServeAppState(state=state, messages=[m for m in messages if m])


def app_exists(serve_app: str) -> bool:
    return app_state(serve_app).state != "NOT_STARTED"


def app_names() -> list[str]:
    """The names of every Serve application (statuses only, no details)."""
    return [overview.name for overview in _client().list_serve_statuses()]


def deployments_of(serve_app: str) -> set[str]:
    """The deployments Serve's controller runs for one application (none when it does not exist)."""
    return {d.name for d in _client().get_serve_status(serve_app).deployment_statuses}


def deployments_by_app() -> dict[str, set[str]]:
    """The deployment names of every Serve application (statuses only)."""
    return {
        overview.name: {d.name for d in overview.deployment_statuses} for overview in _client().list_serve_statuses()
    }


def serve_details() -> dict[str, Any]:
    """Serve's full record of every application (replicas and their states): for status views,
    never on a path that runs per call or per tick. Empty when Serve does not answer."""
    try:
        return _client().get_serve_details()
    except Exception:
        return {}


def running_replicas(serve_app: str) -> dict[str, int]:
    """Running replicas per deployment of a Serve application (none when it does not exist)."""
    app = serve_details().get("applications", {}).get(serve_app, {})
    return {
        name: sum(1 for r in deployment.get("replicas", []) if str(r.get("state")).endswith("RUNNING"))
        for name, deployment in app.get("deployments", {}).items()
    }


def busy_deployments(serve_app: str, names: set[str]) -> set[str]:
    """Those of `names` in one application that Serve runs or starts a replica of, or wants one for
    (target above zero); a deployment the controller cannot answer for counts as busy."""
    controller = _client()._controller
    busy = set()
    for name in names:
        try:
            details = ray.get(controller.get_deployment_details.remote(serve_app, name), timeout=10)
            if details.target_num_replicas > 0 or details.replicas:
                busy.add(name)
        except Exception:
            busy.add(name)
    return busy


def wait_deployed(serve_app: str, names: set[str], wait_s: float) -> None:
    """Until Serve's controller has every deployment of `names` (a handle can be opened then)."""
    deadline = time.monotonic() + wait_s
    while not names <= deployments_of(serve_app):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Serve did not add {sorted(names)} to {serve_app} within {wait_s:g} s")
        time.sleep(0.02)


def wait_gone(serve_app: str, wait_s: float) -> None:
    """Until Serve no longer has the application (or `wait_s` passed)."""
    deadline = time.monotonic() + wait_s
    while app_exists(serve_app) and time.monotonic() < deadline:
        time.sleep(0.05)
