"""What a deploy asks Serve about its applications, one application at a time: `serve.status()` and
the instance details build every application's full record (configs, replicas, topology) on the
controller and validate it in the driver, which grows with every function deployed; a rollout only
needs its own application's status and the names of its app's other versions."""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.serve.context import _get_global_client


@dataclass(frozen=True)
class ServeAppState:
    state: str  # Serve's ApplicationStatus value: NOT_STARTED, DEPLOYING, RUNNING, DEPLOY_FAILED, ...
    messages: list[str]  # the application's and its deployments' non-empty status messages


def app_state(serve_app: str) -> ServeAppState:
    """One application's status (NOT_STARTED when Serve does not know it)."""
    overview = _get_global_client().get_serve_status(serve_app)
    status = overview.app_status
    state = str(getattr(status.status, "value", status.status))
    messages = [status.message] + [d.message for d in overview.deployment_statuses]
    return ServeAppState(state=state, messages=[m for m in messages if m])


def app_exists(serve_app: str) -> bool:
    return app_state(serve_app).state != "NOT_STARTED"


def app_names() -> list[str]:
    """The names of every Serve application (statuses only, no details)."""
    return [overview.name for overview in _get_global_client().list_serve_statuses()]


def deployments_of(serve_app: str) -> set[str]:
    """The deployments Serve's controller runs for one application (none when it does not exist)."""
    return {d.name for d in _get_global_client().get_serve_status(serve_app).deployment_statuses}


def deployments_by_app() -> dict[str, set[str]]:
    """The deployment names of every Serve application (statuses only)."""
    return {
        overview.name: {d.name for d in overview.deployment_statuses}
        for overview in _get_global_client().list_serve_statuses()
    }


def busy_deployments(serve_app: str, names: set[str]) -> set[str]:
    """Those of `names` in one application that Serve runs or starts a replica of, or wants one for
    (target above zero); a deployment the controller cannot answer for counts as busy."""
    controller = _get_global_client()._controller
    busy = set()
    for name in names:
        try:
            details = ray.get(controller.get_deployment_details.remote(serve_app, name), timeout=10)
            if details.target_num_replicas > 0 or details.replicas:
                busy.add(name)
        except Exception:
            busy.add(name)
    return busy
