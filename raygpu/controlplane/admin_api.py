"""The control plane over HTTP: what the CLI does as a Ray driver (deploy, status, ls, logs, stop,
tokens, auth, weights, bill, cost), for a CLI that reaches the cluster only through its gateway.

The gateway forwards `POST /_raygpu/admin/{operation}` here with the caller's bearer token; every
operation needs the admin credential (`raygpu up` created it; the store keeps only its hash). Each
request body is validated by the operation's own model; answers are the CLI's JSON contracts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import traceback
from typing import Any

import ray
from pydantic import BaseModel, ValidationError

from deployments import constants
from deployments.head_actors import start_head_actor
from raygpu.ops.table import OPERATIONS, Context
from raygpu.sdk.admin import using_admin_key
from raygpu.sdk.errors import AdminCredentialError, DeployError, NoClusterError, NotFoundError, RaygpuError

logger = logging.getLogger(f"ray.serve.{__name__}")

ADMIN_API_ACTOR_NAME = constants.ADMIN_API_ACTOR_NAME


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return value


def error_body(status: int, error_type: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"type": error_type, "message": message}}).encode()


class AdminApi:
    """One actor on the head: checks the credential, validates the body, runs the operation in a
    thread (the library calls block), answers JSON."""

    def __init__(self) -> None:
        from deployments.store.actor import get_store

        self.store = get_store()

    async def _admitted(self, credential: str) -> bool:
        """Whether the store takes `credential` as the admin's; anything else (no credential, a
        wrong one, a store that cannot answer) refuses."""
        if not isinstance(credential, str) or not credential:
            return False
        try:
            return bool(await self.store.check_admin.remote(credential))
        except Exception:
            return False

    async def refusal(self, credential: str) -> tuple[int, bytes] | None:
        """The 403 answer for a credential that is not the admin's (None when it is): what the
        gateway asks before it reads an admin request's body."""
        if await self._admitted(credential):
            return None
        return error_body(
            403,
            "AdminCredentialRefused",
            "this admin token is not the cluster's; `raygpu up` printed it once (and left it in "
            "$RAYGPU_HOME/admin.key on the machine that ran it): `raygpu login URL --token ...`",
        )

    async def handle(self, credential: str, operation: str, body: bytes) -> tuple[int, bytes]:
        refused = await self.refusal(credential)
        if refused is not None:
            return refused
        if operation not in OPERATIONS:
            return error_body(
                404, "UnknownOperation", f"no admin operation {operation!r}; known: {', '.join(OPERATIONS)}"
            )
        entry = OPERATIONS[operation]
        try:
            args = entry.args.model_validate_json(body or b"{}")
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
            return error_body(400, "InvalidRequest", f"{operation}: {problems}")

        def call() -> Any:
            with using_admin_key(credential):
                return entry.run(args, Context(remote=True))

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
