"""What the CLI does to a cluster, two ways: as a Ray driver next to it (`--address`, the local
cluster), or over its gateway alone with the admin token of `raygpu login` (a laptop that reaches
only the gateway's port). Both return the same JSON contracts."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel

from billing.cost import CostComparison
from billing.node_bill import NodeBill
from raygpu.app import App
from raygpu.contracts import (
    AppList,
    AppStatus,
    AuthState,
    Bill,
    DeployResult,
    TokenCreated,
    TokenInfo,
    WebhookSecret,
)
from raygpu.errors import AdminCredentialError, DeployError, NoClusterError, NotFoundError, RaygpuError
from raygpu.home import raygpu_home

LOGIN_FILE = "login.json"
GATEWAY_ENV = "RAYGPU_GATEWAY"
ADMIN_TOKEN_ENV = "RAYGPU_ADMIN_TOKEN"
# Upload chunks of weights over the gateway (base64 in JSON: 4/3 of this on the wire).
UPLOAD_CHUNK_BYTES = 8 * 2**20
# `raygpu map` over the gateway: calls in flight, and how it waits out a full queue.
GATEWAY_MAP_CONCURRENCY = 32
QUEUE_FULL_RETRIES = 20
QUEUE_FULL_PAUSE_S = 1.0


class Login(BaseModel):
    url: str
    token: str


def login_path() -> Path:
    return raygpu_home() / LOGIN_FILE


def save_login(url: str, token: str) -> Path:
    """Keep the gateway URL and admin token for later commands (mode 0600)."""
    path = login_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(Login(url=url.rstrip("/"), token=token).model_dump_json())
    os.chmod(path, 0o600)
    return path


def read_login() -> Login | None:
    """The login from RAYGPU_GATEWAY + RAYGPU_ADMIN_TOKEN, else from `raygpu login`'s file."""
    if os.environ.get(GATEWAY_ENV):
        return Login(url=os.environ[GATEWAY_ENV].rstrip("/"), token=os.environ.get(ADMIN_TOKEN_ENV, ""))
    path = login_path()
    if not path.exists():
        return None
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AdminCredentialError(f"{path} is readable by other users; run `chmod 600 {path}`")
    try:
        return Login.model_validate_json(path.read_text())
    except ValueError:
        raise AdminCredentialError(f"{path} is not a raygpu login; run `raygpu login URL --token ...` again") from None


class DriverOperations:
    """The cluster as a Ray driver sees it."""

    def __init__(self, address: str | None):
        from raygpu.connection import connect

        connect(address)
        self.address = address

    def deploy(self, app: App, source: str, check: bool) -> DeployResult:
        from raygpu.deploy import deploy_app

        return deploy_app(app, source, check=check)

    def ls(self) -> AppList:
        from raygpu.deploy import list_apps

        return list_apps()

    def status(self, app: str) -> AppStatus:
        from raygpu.deploy import app_status

        return app_status(app)

    def logs(self, target: str, lines: int) -> list[tuple[str, str]]:
        from raygpu.logs import replica_logs

        return replica_logs(target, lines, remote=bool(self.address))

    def stop(self, app: str) -> None:
        from raygpu.deploy import stop_app

        stop_app(app)

    def token_create(self, app: str) -> TokenCreated:
        from raygpu.tokens import create_token

        return create_token(app)

    def webhook_secret(self, app: str) -> WebhookSecret:
        from raygpu.tokens import webhook_secret

        return webhook_secret(app)

    def token_revoke(self, app: str, token_id: str) -> None:
        from raygpu.tokens import revoke_token

        revoke_token(app, token_id)

    def token_ls(self, app: str | None) -> list[TokenInfo]:
        from raygpu.tokens import list_tokens

        return list_tokens(app)

    def auth_set(self, app: str, protected: bool) -> AuthState:
        from raygpu.tokens import set_auth

        return set_auth(app, protected)

    def auth_show(self, app: str) -> AuthState:
        from raygpu.tokens import auth_state

        return auth_state(app)

    def weights_push(self, app: str, function: str, path: str, model: str | None) -> dict[str, Any]:
        from raygpu.deploy import push_weights

        return push_weights(app, function, path, model)

    def weights_ls(self, app: str, function: str) -> dict[str, Any]:
        from raygpu.deploy import current_weights

        return current_weights(app, function)

    def bill(self, app: str | None, since: float | None, until: float | None, by: str) -> Bill:
        from raygpu.usage import bill

        return bill(app, since, until, by)

    def node_bill(self, since: float | None, until: float | None) -> NodeBill:
        from raygpu.usage import node_bill

        return node_bill(since, until)

    def cost(self, target: str | None, since: float | None, until: float | None, dedicated, per_request):
        from raygpu.usage import cost

        return cost(target, since, until, dedicated, per_request)

    def gateway_url(self) -> str:
        from raygpu.control import public_url

        return public_url()

    def map_inputs(
        self, target: str, inputs: list[dict[str, Any]], token: str | None, concurrency: int | None
    ) -> Iterator[Any]:
        """One call of APP/FN (or APP/Class/method) per keyword-argument dict, through Serve
        handles as `lookup(...).map` does; outputs in input order, a failure as its RemoteCallError."""
        from raygpu.client import lookup

        app, function, method = split_target(target)
        remote = lookup(app, function)
        if method is not None:
            remote = getattr(remote, method)
        return remote.map_kwargs(inputs, return_exceptions=True, max_in_flight=concurrency)


class GatewayOperations:
    """The cluster through its gateway's admin routes, with the admin token."""

    def __init__(self, login: Login, timeout_s: float = 900.0):
        if not login.token:
            raise AdminCredentialError(f"no admin token for {login.url}: set {ADMIN_TOKEN_ENV} or `raygpu login`")
        self.login = login
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def call(self, operation: str, **args: Any) -> Any:
        url = f"{self.login.url}/_raygpu/admin/{operation}"
        try:
            response = self.session.post(
                url,
                data=json.dumps(args),
                headers={"Authorization": f"Bearer {self.login.token}", "Content-Type": "application/json"},
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            raise NoClusterError(f"cannot reach the raygpu gateway at {self.login.url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 200 and "result" in body:
            return body["result"]
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") or f"HTTP {response.status_code} from {url}"
        if response.status_code in (401, 403):
            raise AdminCredentialError(f"{message} (gateway {self.login.url})")
        if response.status_code == 404:
            raise NotFoundError(message)
        if response.status_code == 409:
            raise DeployError(message)
        if response.status_code in (400, 413, 422):
            raise RaygpuError(message)
        raise NoClusterError(f"the cluster failed: {message}")

    def map_inputs(
        self, target: str, inputs: list[dict[str, Any]], token: str | None, concurrency: int | None
    ) -> Iterator[Any]:
        """One HTTP call of APP/FN per keyword-argument dict through the gateway (`token` for a
        protected app), `concurrency` at once; a call refused for a full queue is sent again after
        the Retry-After the gateway gives. Outputs in input order, a failure as its RemoteCallError."""
        from raygpu.batch import run_batch
        from raygpu.client import call_over_http
        from raygpu.errors import RemoteCallError

        split_target(target)

        def call(arguments: dict[str, Any]) -> Any:
            body = json.dumps(arguments)
            for _ in range(QUEUE_FULL_RETRIES):
                try:
                    return json.loads(call_over_http(self.login.url, target, body, token, timeout_s=self.timeout_s))
                except RemoteCallError as exc:
                    if exc.status != 503 or exc.error_type not in ("QueueFull", "TooManyConnections"):
                        raise
                    time.sleep(QUEUE_FULL_PAUSE_S)
            return json.loads(call_over_http(self.login.url, target, body, token, timeout_s=self.timeout_s))

        return run_batch(call, inputs, window=concurrency or GATEWAY_MAP_CONCURRENCY, return_exceptions=True)

    def upload(self, where: str, path: str) -> str:
        """A local weights file into the cluster's blob store (nothing sent when it has those bytes)."""
        from deployments.weights_location import blob_name, is_location

        if is_location(path):
            return path
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_file():
            raise DeployError(f"{where}: weights file {resolved} not found")
        name = blob_name(resolved)
        if not self.call("blob_has", name=name):
            offset = 0
            with open(resolved, "rb") as f:
                while True:
                    chunk = f.read(UPLOAD_CHUNK_BYTES)
                    if not chunk and offset:
                        break
                    self.call("blob_put", name=name, offset=offset, data=base64.b64encode(chunk).decode())
                    offset += len(chunk)
                    if not chunk:
                        break
            self.call("blob_commit", name=name)
        return f"raygpu-blob://{name}"

    def deploy(self, app: App, source: str, check: bool) -> DeployResult:
        from raygpu.deploy import prepare_units

        units = prepare_units(app, self.upload)
        result = self.call(
            "deploy",
            app=app.name,
            source=source,
            units=[json.loads(u.model_dump_json()) for u in units],
            check=check,
        )
        return DeployResult.model_validate(result)

    def ls(self) -> AppList:
        return AppList.model_validate(self.call("ls"))

    def status(self, app: str) -> AppStatus:
        return AppStatus.model_validate(self.call("status", app=app))

    def logs(self, target: str, lines: int) -> list[tuple[str, str]]:
        return [(name, text) for name, text in self.call("logs", target=target, lines=lines)]

    def stop(self, app: str) -> None:
        self.call("stop", app=app)

    def token_create(self, app: str) -> TokenCreated:
        return TokenCreated.model_validate(self.call("token_create", app=app))

    def webhook_secret(self, app: str) -> WebhookSecret:
        return WebhookSecret.model_validate(self.call("webhook_secret", app=app))

    def token_revoke(self, app: str, token_id: str) -> None:
        self.call("token_revoke", app=app, token_id=token_id)

    def token_ls(self, app: str | None) -> list[TokenInfo]:
        return [TokenInfo.model_validate(t) for t in self.call("token_ls", app=app)]

    def auth_set(self, app: str, protected: bool) -> AuthState:
        return AuthState.model_validate(self.call("auth_set", app=app, protected=protected))

    def auth_show(self, app: str) -> AuthState:
        return AuthState.model_validate(self.call("auth_show", app=app))

    def weights_push(self, app: str, function: str, path: str, model: str | None) -> dict[str, Any]:
        from raygpu.deploy import check_weights_readable

        if not Path(path).expanduser().is_file() and not path.startswith(("file://", "raygpu-blob://")):
            raise DeployError(f"weights file {Path(path).expanduser().resolve()} not found")
        if Path(path).expanduser().is_file():
            check_weights_readable(str(Path(path).expanduser().resolve()))
        location = self.upload(f"{app}/{function}", path)
        return self.call("weights_push", app=app, function=function, location=location, model=model)

    def weights_ls(self, app: str, function: str) -> dict[str, Any]:
        return self.call("weights_ls", app=app, function=function)

    def bill(self, app: str | None, since: float | None, until: float | None, by: str) -> Bill:
        return Bill.model_validate(self.call("bill", app=app, since=since, until=until, by=by))

    def node_bill(self, since: float | None, until: float | None) -> NodeBill:
        return NodeBill.model_validate(self.call("node_bill", since=since, until=until))

    def cost(self, target: str | None, since: float | None, until: float | None, dedicated, per_request):
        raw = self.call("cost", target=target, since=since, until=until, dedicated=dedicated, per_request=per_request)
        return CostComparison.model_validate(raw)

    def gateway_url(self) -> str:
        return self.login.url


def split_target(target: str) -> tuple[str, str, str | None]:
    """APP/FN or APP/Class/method as (app, function or class, method or None)."""
    parts = target.strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"name the target as APP/FUNCTION or APP/Class/method, not {target!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def operations(address: str | None) -> DriverOperations | GatewayOperations:
    """`--address` (or RAYGPU_ADDRESS) attaches as a Ray driver; else a login (RAYGPU_GATEWAY or
    `raygpu login`) goes through the gateway; else the local cluster."""
    if address or os.environ.get("RAYGPU_ADDRESS"):
        return DriverOperations(address)
    login = read_login()
    if login is not None:
        return GatewayOperations(login)
    return DriverOperations(None)
