"""The control plane over the gateway: `POST /_raygpu/admin/{operation}` with the admin token goes
to the admin API actor on the head, which checks the credential and runs the operation."""

from __future__ import annotations

import logging
from typing import Any

import ray
from starlette.requests import Request
from starlette.responses import Response

from deployments import constants
from deployments.gateway.http import ClientLimits, error_response, read_body

logger = logging.getLogger("ray.serve.deployments.gateway")


class AdminProxy:
    """Forwards admin requests of one gateway replica to the admin API actor."""

    def __init__(self, limits: ClientLimits):
        self.limits = limits
        self._admin_api: Any = None

    async def accepts(self, authorization: str) -> bool:
        """Whether an `Authorization` header carries the admin credential (checked by the admin API
        against the store's hash; an unreachable admin API accepts nothing)."""
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential.startswith(constants.ADMIN_KEY_PREFIX):
            return False
        try:
            if self._admin_api is None:
                self._admin_api = ray.get_actor(constants.ADMIN_API_ACTOR_NAME, namespace=constants.RAY_NAMESPACE)
            return await self._admin_api.refusal.remote(credential) is None
        except Exception as exc:
            self._admin_api = None
            logger.warning("raygpu gateway: could not check an admin credential (%s)", exc)
            return False

    async def __call__(self, request: Request, parts: list[str]) -> Response:
        """The control plane for a CLI that reaches the cluster only through this gateway: the
        credential is checked, the operation run, by the admin API actor on the head."""
        if len(parts) != 2 or parts[0] != "admin":
            return error_response(404, "NotFound", "admin operations are POST /_raygpu/admin/{operation}")
        if request.method != "POST":
            return error_response(405, "MethodNotAllowed", "use POST for admin operations", headers={"Allow": "POST"})
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return error_response(
                401,
                "AdminAuthRequired",
                "admin operations need the cluster's admin token: `raygpu login URL --token ...`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            if self._admin_api is None:
                self._admin_api = ray.get_actor(constants.ADMIN_API_ACTOR_NAME, namespace=constants.RAY_NAMESPACE)
            # the credential is checked before the body is read: a caller without it uploads nothing
            refused = await self._admin_api.refusal.remote(credential.strip())
            if refused is not None:
                status, body = refused
                return Response(content=body, status_code=status, media_type="application/json")
            raw = await read_body(request, self.limits)
            if isinstance(raw, Response):
                return raw
            status, body = await self._admin_api.handle.remote(credential.strip(), parts[1], raw)
        except Exception as exc:
            self._admin_api = None
            logger.warning("raygpu gateway: the admin API is unavailable (%s)", exc)
            return error_response(503, "AdminApiUnavailable", "the control plane's admin API is not running; retry")
        return Response(content=body, status_code=status, media_type="application/json")
