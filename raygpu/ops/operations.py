"""What the CLI does to a cluster, two ways: as a Ray driver next to it (`--address`, the local
cluster), or over its gateway alone with the admin token of `raygpu login` (a laptop that reaches
only the gateway's port). Both are made from the one table of operations (raygpu.ops.table) and
return the same JSON contracts."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel, Field, TypeAdapter

from raygpu.ops.contracts import DeployResult
from raygpu.ops.table import OPERATIONS, Args, Context, DeployArgs, WeightsPushArgs
from raygpu.sdk.app import App
from raygpu.sdk.errors import AdminCredentialError, DeployError, NoClusterError, NotFoundError, RaygpuError
from raygpu.sdk.home import raygpu_home

LOGIN_FILE = "login.json"
GATEWAY_ENV = "RAYGPU_GATEWAY"
ADMIN_TOKEN_ENV = "RAYGPU_ADMIN_TOKEN"
# Upload chunks of weights over the gateway (base64 in JSON: 4/3 of this on the wire).
UPLOAD_CHUNK_BYTES = 8 * 2**20
# `raygpu map` over the gateway: calls in flight, and how it waits out a full queue.
GATEWAY_MAP_CONCURRENCY = 32
QUEUE_FULL_RETRIES = 20
QUEUE_FULL_PAUSE_S = 1.0


INSECURE_ENV = "RAYGPU_INSECURE"


class Login(BaseModel):
    url: str
    token: str
    # the operator chose plain HTTP to a host that is not this machine (`raygpu login --insecure`)
    insecure: bool = False
    # the SHA-256 of the gateway's self-signed certificate, the only one accepted (`--fingerprint`)
    fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


def plain_http_to_another_host(url: str) -> bool:
    """Whether `url` is plain HTTP to a host other than this machine's loopback: the admin credential
    would cross a network in clear text."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: it may resolve anywhere


def refuse_plain_http(login: Login) -> None:
    """Fail closed: no admin credential over plain HTTP to another host unless the operator said so."""
    if plain_http_to_another_host(login.url) and not login.insecure:
        raise AdminCredentialError(
            f"refusing to send the admin credential over plain HTTP to {login.url}: use https:// (see "
            f"cluster.yaml for TLS), or `raygpu login {login.url} --insecure` (or {INSECURE_ENV}=1) on a network "
            "you trust"
        )


def login_path() -> Path:
    return raygpu_home() / LOGIN_FILE


def save_login(url: str, token: str, insecure: bool = False, fingerprint: str | None = None) -> Path:
    """Keep the gateway URL and admin token for later commands (mode 0600)."""
    path = login_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(Login(url=url.rstrip("/"), token=token, insecure=insecure, fingerprint=fingerprint).model_dump_json())
    os.chmod(path, 0o600)
    return path


def read_login() -> Login | None:
    """The login from RAYGPU_GATEWAY + RAYGPU_ADMIN_TOKEN, else from `raygpu login`'s file."""
    if os.environ.get(GATEWAY_ENV):
        return Login(
            url=os.environ[GATEWAY_ENV].rstrip("/"),
            token=os.environ.get(ADMIN_TOKEN_ENV, ""),
            insecure=os.environ.get(INSECURE_ENV) == "1",
        )
    path = login_path()
    if not path.exists():
        return None
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AdminCredentialError(f"{path} is readable by other users; run `chmod 600 {path}`")
    try:
        return Login.model_validate_json(path.read_text())
    except ValueError:
        raise AdminCredentialError(f"{path} is not a raygpu login; run `raygpu login URL --token ...` again") from None


class Operations(ABC):
    """What both ways share: every operation of the table (raygpu.ops.table) as a method taking its
    arguments in the order of its argument model's fields, validated before anything is sent."""

    @abstractmethod
    def _run(self, name: str, args: Args) -> Any:
        """Run operation `name` with its validated arguments; its answer as the table's contract."""

    @abstractmethod
    def _store_weights(self, where: str, path: str) -> str:
        """The stored location a deploy names instead of a weights file on this machine."""

    def deploy(self, app: App, source: str, check: bool) -> DeployResult:
        from raygpu.ops.deploy import prepare_units

        units = prepare_units(app, self._store_weights)
        return self._run("deploy", DeployArgs(app=app.name, source=source, units=units, check=check))


def _operation_method(name: str) -> Any:
    fields = list(OPERATIONS[name].args.model_fields)

    def method(self: Operations, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(fields):
            raise TypeError(f"{name} takes {len(fields)} arguments ({', '.join(fields)}), not {len(args)}")
        values = dict(zip(fields, args))
        values.update(kwargs)
        return self._run(name, OPERATIONS[name].args.model_validate(values))

    method.__name__ = name
    method.__doc__ = f"The control-plane operation {name!r} (raygpu.ops.table)."
    return method


for _name in OPERATIONS:
    if not hasattr(Operations, _name):
        setattr(Operations, _name, _operation_method(_name))


class DriverOperations(Operations):
    """The cluster as a Ray driver sees it: the table's operations run here."""

    def __init__(self, address: str | None):
        from raygpu.sdk.connection import connect

        connect(address)
        self.address = address

    def _run(self, name: str, args: Args) -> Any:
        return OPERATIONS[name].run(args, Context(remote=bool(self.address)))

    def _store_weights(self, where: str, path: str) -> str:
        from raygpu.ops.deploy import stored_weights

        return stored_weights(where, path)

    def weights_push(self, app: str, function: str, path: str, model: str | None) -> dict[str, Any]:
        """A local file is checked against the model before it is uploaded (push_weights does both)."""
        from raygpu.ops.deploy import push_weights

        return push_weights(app, function, path, model)

    def gateway_url(self) -> str:
        from raygpu.sdk.control import public_url

        return public_url()

    def map_inputs(
        self, target: str, inputs: list[dict[str, Any]], token: str | None, concurrency: int | None
    ) -> Iterator[Any]:
        """One call of APP/FN (or APP/Class/method) per keyword-argument dict, through Serve
        handles as `lookup(...).map` does; outputs in input order, a failure as its RemoteCallError."""
        from raygpu.sdk.client import lookup

        app, function, method = split_target(target)
        remote = lookup(app, function)
        if method is not None:
            remote = getattr(remote, method)
        return remote.map_kwargs(inputs, return_exceptions=True, max_in_flight=concurrency)


class GatewayOperations(Operations):
    """The cluster through its gateway's admin routes, with the admin token: the table's operations
    run on the head, their answers parsed into the same contracts."""

    def __init__(self, login: Login, timeout_s: float = 900.0):
        if not login.token:
            raise AdminCredentialError(f"no admin token for {login.url}: set {ADMIN_TOKEN_ENV} or `raygpu login`")
        refuse_plain_http(login)
        self.login = login
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if login.fingerprint:
            from raygpu.sdk.pinning import PinnedAdapter

            self.session.verify = False  # the pin stands in for the CA and the host name
            self.session.mount("https://", PinnedAdapter(login.fingerprint))

    def _run(self, name: str, args: Args) -> Any:
        answer = OPERATIONS[name].answer
        result = self.call(name, **args.model_dump(mode="json"))
        return None if answer is None else TypeAdapter(answer).validate_python(result)

    def _store_weights(self, where: str, path: str) -> str:
        return self.upload(where, path)

    def call(self, operation: str, **args: Any) -> Any:
        url = f"{self.login.url}/_raygpu/admin/{operation}"
        try:
            response = self.session.post(
                url,
                data=json.dumps(args),
                headers={"Authorization": f"Bearer {self.login.token}", "Content-Type": "application/json"},
                timeout=self.timeout_s,
            )
        except requests.exceptions.SSLError as exc:
            raise NoClusterError(
                f"the raygpu gateway at {self.login.url} did not present a certificate this machine trusts ({exc}); "
                "for a self-signed one, `raygpu login URL --token ... --fingerprint sha256:...` with the "
                "fingerprint `raygpu up --tls-self-signed` printed"
            ) from None
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
        from raygpu.sdk.batch import run_batch
        from raygpu.sdk.client import call_over_http
        from raygpu.sdk.errors import RemoteCallError

        split_target(target)

        def call(arguments: dict[str, Any]) -> Any:
            body = json.dumps(arguments)
            for _ in range(QUEUE_FULL_RETRIES):
                try:
                    return json.loads(
                        call_over_http(
                            self.login.url,
                            target,
                            body,
                            token,
                            timeout_s=self.timeout_s,
                            fingerprint=self.login.fingerprint,
                        )
                    )
                except RemoteCallError as exc:
                    if exc.status != 503 or exc.error_type not in ("QueueFull", "TooManyConnections"):
                        raise
                    time.sleep(QUEUE_FULL_PAUSE_S)
            return json.loads(
                call_over_http(
                    self.login.url, target, body, token, timeout_s=self.timeout_s, fingerprint=self.login.fingerprint
                )
            )

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
        if not self.blob_has(name):
            offset = 0
            with open(resolved, "rb") as f:
                while True:
                    chunk = f.read(UPLOAD_CHUNK_BYTES)
                    if not chunk and offset:
                        break
                    self.blob_put(name, offset, base64.b64encode(chunk).decode())
                    offset += len(chunk)
                    if not chunk:
                        break
            self.blob_commit(name)
        return f"raygpu-blob://{name}"

    def weights_push(self, app: str, function: str, path: str, model: str | None) -> dict[str, Any]:
        from raygpu.ops.deploy import check_weights_readable

        if not Path(path).expanduser().is_file() and not path.startswith(("file://", "raygpu-blob://")):
            raise DeployError(f"weights file {Path(path).expanduser().resolve()} not found")
        if Path(path).expanduser().is_file():
            check_weights_readable(str(Path(path).expanduser().resolve()))
        location = self.upload(f"{app}/{function}", path)
        return self._run("weights_push", WeightsPushArgs(app=app, function=function, location=location, model=model))

    def gateway_url(self) -> str:
        return self.login.url


def split_target(target: str) -> tuple[str, str, str | None]:
    """APP/FN or APP/Class/method as (app, function or class, method or None)."""
    parts = target.strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"name the target as APP/FUNCTION or APP/Class/method, not {target!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def operations(address: str | None) -> Operations:
    """`--address` (or RAYGPU_ADDRESS) attaches as a Ray driver; else a login (RAYGPU_GATEWAY or
    `raygpu login`) goes through the gateway; else the local cluster."""
    if address or os.environ.get("RAYGPU_ADDRESS"):
        return DriverOperations(address)
    login = read_login()
    if login is not None:
        return GatewayOperations(login)
    return DriverOperations(None)
