"""The control plane over HTTP: what the CLI does as a Ray driver (deploy, status, ls, logs, stop,
tokens, auth, weights, bill, cost), for a CLI that reaches the cluster only through its gateway.

The gateway forwards `POST /_raygpu/admin/{operation}` here with the caller's bearer token; every
operation needs the admin credential (`raygpu up` created it; the store keeps only its hash). Each
request body is validated by the operation's own model; answers are the CLI's JSON contracts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import traceback
from collections.abc import Callable
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments import constants
from deployments.head_actors import start_head_actor
from deployments.weights_location import BLOB_NAME
from raygpu.admin import using_admin_key
from raygpu.contracts import PreparedUnit
from raygpu.errors import AdminCredentialError, DeployError, NoClusterError, NotFoundError, RaygpuError

logger = logging.getLogger(f"ray.serve.{__name__}")

ADMIN_API_ACTOR_NAME = constants.ADMIN_API_ACTOR_NAME


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoArgs(_Body):
    pass


class AppArg(_Body):
    app: str = Field(min_length=1, max_length=63)


class DeployArgs(_Body):
    app: str = Field(min_length=1, max_length=63)
    source: str = Field(min_length=1, max_length=4096)
    units: list[PreparedUnit] = Field(min_length=1, max_length=256)
    check: bool = False


class LogsArgs(_Body):
    target: str = Field(min_length=1, max_length=200)
    lines: int = Field(default=100, ge=1, le=100_000)


class RevokeArgs(_Body):
    app: str = Field(min_length=1, max_length=63)
    token_id: str = Field(min_length=1, max_length=64)


class AuthArgs(_Body):
    app: str = Field(min_length=1, max_length=63)
    protected: bool


class TokenListArgs(_Body):
    app: str | None = Field(default=None, max_length=63)


class WeightsPushArgs(_Body):
    app: str = Field(min_length=1, max_length=63)
    function: str = Field(min_length=1, max_length=63)
    location: str = Field(min_length=1, max_length=4096)
    model: str | None = Field(default=None, max_length=128)


class WeightsListArgs(_Body):
    app: str = Field(min_length=1, max_length=63)
    function: str = Field(min_length=1, max_length=63)


class BillArgs(_Body):
    app: str | None = Field(default=None, max_length=63)
    since: float | None = None
    until: float | None = None
    by: str = Field(default="function", pattern="^(function|day)$")


class NodeBillArgs(_Body):
    since: float | None = None
    until: float | None = None


class CostArgs(_Body):
    target: str | None = Field(default=None, max_length=200)
    since: float | None = None
    until: float | None = None
    dedicated: str | None = Field(default=None, max_length=64)
    per_request: str | None = Field(default=None, max_length=64)


class BlobArgs(_Body):
    name: str = Field(pattern=BLOB_NAME.pattern)


class BlobChunk(_Body):
    name: str = Field(pattern=BLOB_NAME.pattern)
    offset: int = Field(ge=0)
    data: str = Field(max_length=64 * 2**20, description="base64")


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _operations() -> dict[str, tuple[type[_Body], Callable[[Any], Any]]]:
    from deployments.node.blobs import blobs
    from raygpu import deploy, rollout, tokens, usage
    from raygpu.admin import admin_key
    from raygpu.logs import replica_logs

    def put_blob(a: BlobChunk) -> int:
        data = base64.b64decode(a.data, validate=True)
        return ray.get(blobs().put.remote(admin_key(), a.name, a.offset, data))

    def deploy_units(a: DeployArgs) -> Any:
        return rollout.roll_out(a.app, a.source, a.units, check=a.check)

    return {
        "ls": (NoArgs, lambda a: deploy.list_apps()),
        "status": (AppArg, lambda a: deploy.app_status(a.app)),
        "deploy": (DeployArgs, deploy_units),
        "stop": (AppArg, lambda a: deploy.stop_app(a.app)),
        "logs": (LogsArgs, lambda a: [list(item) for item in replica_logs(a.target, a.lines, remote=True)]),
        "token_create": (AppArg, lambda a: tokens.create_token(a.app)),
        "token_revoke": (RevokeArgs, lambda a: tokens.revoke_token(a.app, a.token_id)),
        "token_ls": (TokenListArgs, lambda a: tokens.list_tokens(a.app)),
        "webhook_secret": (AppArg, lambda a: tokens.webhook_secret(a.app)),
        "auth_set": (AuthArgs, lambda a: tokens.set_auth(a.app, a.protected)),
        "auth_show": (AppArg, lambda a: tokens.auth_state(a.app)),
        "weights_push": (WeightsPushArgs, lambda a: deploy.push_weights(a.app, a.function, a.location, a.model)),
        "weights_ls": (WeightsListArgs, lambda a: deploy.current_weights(a.app, a.function)),
        "bill": (BillArgs, lambda a: usage.bill(a.app, a.since, a.until, a.by)),
        "node_bill": (NodeBillArgs, lambda a: usage.node_bill(a.since, a.until)),
        "cost": (CostArgs, lambda a: usage.cost(a.target, a.since, a.until, a.dedicated, a.per_request)),
        "blob_has": (BlobArgs, lambda a: ray.get(blobs().has.remote(a.name))),
        "blob_put": (BlobChunk, put_blob),
        "blob_commit": (BlobArgs, lambda a: ray.get(blobs().commit.remote(admin_key(), a.name))),
    }


OPERATIONS = (
    "ls status deploy stop logs token_create token_revoke token_ls webhook_secret auth_set auth_show weights_push weights_ls "
    "bill node_bill cost blob_has blob_put blob_commit"
).split()


def error_body(status: int, error_type: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"type": error_type, "message": message}}).encode()


class AdminApi:
    """One actor on the head: checks the credential, validates the body, runs the operation in a
    thread (the library calls block), answers JSON."""

    def __init__(self) -> None:
        from deployments.store.actor import get_store

        self.store = get_store()
        self.operations = _operations()

    async def _admitted(self, credential: str) -> bool:
        """Whether the store takes `credential` as the admin's; anything else (no credential, a
        wrong one, a store that cannot answer) refuses."""
        if not isinstance(credential, str) or not credential:
            return False
        try:
            return bool(await self.store.check_admin.remote(credential))
        except Exception:
            return False

    async def handle(self, credential: str, operation: str, body: bytes) -> tuple[int, bytes]:
        if not await self._admitted(credential):
            return error_body(
                403,
                "AdminCredentialRefused",
                "this admin token is not the cluster's; `raygpu up` printed it once (and left it in "
                "$RAYGPU_HOME/admin.key on the machine that ran it): `raygpu login URL --token ...`",
            )
        if operation not in self.operations:
            return error_body(
                404, "UnknownOperation", f"no admin operation {operation!r}; known: {', '.join(OPERATIONS)}"
            )
        model, run = self.operations[operation]
        try:
            args = model.model_validate_json(body or b"{}")
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
            return error_body(400, "InvalidRequest", f"{operation}: {problems}")

        def call() -> Any:
            with using_admin_key(credential):
                return run(args)

        try:
            result = await asyncio.to_thread(call)
        except NotFoundError as exc:
            return error_body(404, "NotFound", str(exc))
        except (AdminCredentialError, PermissionError) as exc:
            return error_body(403, "Forbidden", str(exc))
        except (DeployError, ValueError, FileNotFoundError) as exc:
            return error_body(400 if not isinstance(exc, DeployError) else 409, type(exc).__name__, str(exc))
        except NoClusterError as exc:
            return error_body(503, "Unavailable", str(exc))
        except RaygpuError as exc:
            return error_body(400, type(exc).__name__, str(exc))
        except Exception:
            error_id = secrets.token_hex(4)
            logger.error("raygpu admin API: %s failed (error id %s):\n%s", operation, error_id, traceback.format_exc())
            return error_body(
                500, "InternalError", f"{operation} failed; the head's admin API log has error id {error_id}"
            )
        return 200, json.dumps({"result": _dump(result)}).encode()


def start_admin_api() -> Any:
    handle = start_head_actor(AdminApi, ADMIN_API_ACTOR_NAME, max_concurrency=16)
    ray.get(handle.handle.remote("", "ls", b"{}"))
    return handle
