"""Calling deployed functions from Python: `raygpu.lookup("app", "fn").remote(**kwargs)`.

Calls go through a Serve handle straight to the function's deployment (a process attached to the
cluster is trusted, as with `ray`), and each call is recorded as an arrival for the autoscaler.
"""

from __future__ import annotations

import json
import time
from typing import Any

import ray

from deployments.spec import DeployedFunction
from raygpu.errors import NotFoundError, RemoteCallError


_handles: dict[tuple[str, str], Any] = {}


def _handle(serve_app: str, deployment: str) -> Any:
    from ray import serve

    key = (serve_app, deployment)
    if key not in _handles:
        _handles[key] = serve.get_deployment_handle(deployment, app_name=serve_app)
    return _handles[key]


def close_handles() -> None:
    """Stop the routers of this process's handles (before disconnecting from the cluster)."""
    while _handles:
        _, handle = _handles.popitem()
        try:
            handle.shutdown()
        except Exception:
            pass


class RemoteFunction:
    """A deployed function (or one method of a deployed class)."""

    def __init__(self, app: str, deployed: DeployedFunction, method: str | None = None):
        self.app = app
        self.deployed = deployed
        self.method = method

    def __getattr__(self, name: str) -> "RemoteFunction":
        spec = self.deployed.spec
        if spec.kind != "class" or self.method is not None or name.startswith("_"):
            raise AttributeError(name)
        if name not in spec.methods:
            raise NotFoundError(f"class {spec.name!r} has no method {name!r}; methods: {', '.join(spec.methods)}")
        return RemoteFunction(self.app, self.deployed, name)

    def remote(self, **kwargs: Any) -> Any:
        """Call the deployed function and return its result; raise RemoteCallError on failure."""
        from raygpu.deploy import store

        spec = self.deployed.spec
        if spec.kind == "class" and self.method is None:
            raise RemoteCallError(400, "MethodRequired", f"pick a method: lookup(...).{spec.methods[0]}.remote(...)")
        store().record_arrivals.remote([(self.app, spec.name, time.time())])
        handle = _handle(self.deployed.serve_app, self.deployed.deployment)
        status, body, _version, _headers = handle.remote(self.method, kwargs).result(timeout_s=spec.timeout + 600.0)
        payload = json.loads(body)
        if status != 200:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise RemoteCallError(status, error.get("type", "Error"), error.get("message", str(payload)),
                                  error.get("details"))
        return payload

    def __repr__(self) -> str:
        suffix = f".{self.method}" if self.method else ""
        return f"<raygpu.RemoteFunction {self.app}/{self.deployed.spec.name}{suffix}>"


def lookup(app: str, name: str, *, address: str | None = None) -> RemoteFunction:
    """Find a deployed function or class by app and name (connecting to the cluster if needed)."""
    from raygpu.cluster import connect
    from raygpu.deploy import store

    connect(address)
    apps = {a["name"]: a for a in ray.get(store().live_apps.remote())}
    if app not in apps:
        raise NotFoundError(f"app {app!r} is not deployed; `raygpu ls` lists the deployed apps")
    for raw in apps[app]["functions"]:
        deployed = DeployedFunction.model_validate(raw)
        if deployed.spec.name == name:
            return RemoteFunction(app, deployed)
    known = ", ".join(f["spec"]["name"] for f in apps[app]["functions"])
    raise NotFoundError(f"app {app!r} has no function or class {name!r}; it has: {known}")
