"""Spawned calls at the gateway: `POST .../spawn` records a call and answers 202 at once (the call
runner on the head runs it), `GET /{app}/calls/{id}[?wait=S]` answers its record, `DELETE` cancels it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from starlette.requests import Request
from starlette.responses import Response

from deployments import constants
from deployments.calls.callbacks import CALLBACK_HEADER, CallbackRefused, check_callback_url
from deployments.calls.core import queue_full
from deployments.calls.records import FINISHED, parse_wait
from deployments.calls.runner import RUNNER_ACTOR_NAME
from deployments.gateway.answers import internal_error
from deployments.gateway.body import BodyError, parse_arguments
from deployments.gateway.http import ClientLimits, error_response, json_response, read_body
from deployments.gateway.routing import Route

logger = logging.getLogger("ray.serve.deployments.gateway")


class SpawnedCalls:
    """The spawn and call-record routes of one gateway replica, over the control-plane store."""

    def __init__(self, store: Any, limits: ClientLimits):
        self.store = store
        self.limits = limits
        self._call_runner: Any = None

    def _runner(self) -> Any:
        if self._call_runner is None:
            self._call_runner = ray.get_actor(RUNNER_ACTOR_NAME, namespace=constants.RAY_NAMESPACE)
        return self._call_runner

    async def spawn(self, route: Route, request: Request) -> Response:
        """`POST /{app}/{fn}/spawn`: record the call and answer 202 with its id at once; the call
        runner runs it, and posts the final record to `x-raygpu-callback` when one is given."""
        app, spec = route.app, route.deployed.spec
        raw = await read_body(request, self.limits)
        if isinstance(raw, Response):
            return raw
        try:
            body = parse_arguments(raw)
        except BodyError as exc:
            return error_response(400, exc.error_type, exc.message)
        callback = request.headers.get(CALLBACK_HEADER)
        if callback is not None:
            allowed = await self.store.get_setting.remote("callback_allow", [])
            try:
                await asyncio.to_thread(check_callback_url, callback.strip(), allowed)
            except CallbackRefused as exc:
                return error_response(400, "CallbackRefused", str(exc))
        try:
            record = await self.store.create_call.remote(
                app,
                spec.name,
                route.target,
                body if body is not None else {},
                callback.strip() if callback else None,
                spec.queue_bound,
            )
        except Exception:
            return internal_error(f"spawn of {app}/{spec.name}")
        if record is None:
            full = queue_full(spec.name)
            return error_response(full.status, full.error_type, full.message, headers=full.headers)
        try:
            self._runner().submit.remote(record["call_id"])
        except Exception as exc:  # the runner's sweep finds the recorded call when it is back
            self._call_runner = None
            logger.warning("raygpu gateway: call runner unavailable (%s); call %s waits for it", exc, record["call_id"])
        location = f"/{app}/{constants.CALLS_ROUTE}/{record['call_id']}"
        return json_response(202, {"call_id": record["call_id"]}, headers={"Location": location})

    async def calls(self, app: str, request: Request, rest: list[str]) -> Response:
        """`GET /{app}/calls/{call_id}[?wait=S]` answers the record (waiting up to S seconds for the
        call to finish); `DELETE` cancels an open call (409 once it has finished)."""
        if len(rest) != 1:
            return error_response(404, "NotFound", f"spawned calls are at /{app}/{constants.CALLS_ROUTE}/{{call_id}}")
        call_id = rest[0]
        unknown = error_response(
            404, "NotFound", f"app {app!r} has no spawned call {call_id!r} (or it is past retention)"
        )
        if request.method == "GET":
            try:
                wait_s = parse_wait(request.query_params.get("wait"))
            except ValueError as exc:
                return error_response(400, "InvalidWait", str(exc))
            record = await self.store.get_call.remote(call_id, app, wait_s)
            return unknown if record is None else json_response(200, record)
        if request.method == "DELETE":
            previous, record = await self.store.cancel_call.remote(call_id, app)
            if previous is None:
                return unknown
            if previous in FINISHED:
                return error_response(409, "CallFinished", f"call {call_id} has already {previous}; nothing to cancel")
            if previous == "running":
                try:
                    await self._runner().cancel.remote(call_id)
                except Exception as exc:
                    self._call_runner = None
                    logger.warning("raygpu gateway: could not stop running call %s (%s)", call_id, exc)
            return json_response(200, record)
        return error_response(
            405,
            "MethodNotAllowed",
            "GET a spawned call's record or DELETE it to cancel",
            headers={"Allow": "GET, DELETE"},
        )
