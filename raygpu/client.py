"""Calling deployed functions from Python: `raygpu.lookup("app", "fn").remote(**kwargs)`.

Calls go through a Serve handle straight to the function's deployment (a process attached to the
cluster is trusted, as with `ray`), and each call is recorded as an arrival for the autoscaler.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import ray

from deployments import constants
from deployments.spec import DeployedFunction
from raygpu.connection import connect, serve_handle
from raygpu.control import store
from raygpu.errors import NoClusterError, NotFoundError, RemoteCallError


class RemoteFunction:
    """A deployed function (or one method of a deployed class)."""

    def __init__(self, app: str, deployed: DeployedFunction, method: str | None = None):
        self.app = app
        self.deployed = deployed
        self.method = method

    def __getattr__(self, name: str) -> "RemoteFunction":
        spec = self.deployed.spec
        if not spec.methods or self.method is not None or name.startswith("_"):
            raise AttributeError(name)
        if name not in spec.methods:
            raise NotFoundError(f"class {spec.name!r} has no method {name!r}; methods: {', '.join(spec.methods)}")
        return RemoteFunction(self.app, self.deployed, name)

    def remote(self, **kwargs: Any) -> Any:
        """Call the deployed function and return its result; raise RemoteCallError on failure."""
        spec = self.deployed.spec
        if spec.methods and self.method is None:
            raise RemoteCallError(400, "MethodRequired", f"pick a method: lookup(...).{spec.methods[0]}.remote(...)")
        store().record_arrivals.remote([(self.app, spec.name, time.time())])
        handle = serve_handle(self.deployed.serve_app, self.deployed.deployment)
        deadline = time.monotonic() + spec.timeout + spec.startup_timeout
        while True:
            status, body, _version, headers = handle.remote(self.method, kwargs).result(
                timeout_s=max(deadline - time.monotonic(), 0.001)
            )
            if constants.DRAINING_HEADER not in headers or time.monotonic() >= deadline:
                break
            time.sleep(constants.DRAINING_RETRY_S)  # that replica is being replaced: go to another
        payload = json.loads(body)
        if status != 200:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise RemoteCallError(
                status, error.get("type", "Error"), error.get("message", str(payload)), error.get("details")
            )
        return payload

    def __repr__(self) -> str:
        suffix = f".{self.method}" if self.method else ""
        return f"<raygpu.RemoteFunction {self.app}/{self.deployed.spec.name}{suffix}>"


def lookup(app: str, name: str, *, address: str | None = None) -> RemoteFunction:
    """Find a deployed function or class by app and name (connecting to the cluster if needed)."""
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


def call_over_http(url: str, target: str, data: str, token: str | None = None, timeout_s: float = 3600) -> str:
    """POST a JSON body to APP/FN (or APP/Class/method) through the gateway at `url`; the answer's
    body, or RemoteCallError with the gateway's status and error."""
    path = target.strip("/")
    if path.count("/") not in (1, 2):
        raise ValueError("name the target as APP/FUNCTION or APP/Class/method")
    try:
        json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--data is not valid JSON: {exc}") from None
    request = urllib.request.Request(
        f"{url.rstrip('/')}/{path}", data=data.encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        try:
            error = json.loads(body)["error"]
            raise RemoteCallError(exc.code, error["type"], error["message"], error.get("details")) from None
        except (ValueError, KeyError, TypeError):
            raise RemoteCallError(exc.code, "HTTPError", body) from None
    except urllib.error.URLError as exc:
        raise NoClusterError(f"cannot reach the gateway at {url}: {exc.reason}") from None
