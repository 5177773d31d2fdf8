"""Spawned calls at the gateway: `POST .../spawn` records a call and answers 202 at once (the call
runner on the head runs it), `GET /{app}/calls/{id}[?wait=S]` answers its record (a waiting caller
waits here: call_waits.py), `DELETE` cancels it."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import ray
from starlette.requests import Request
from starlette.responses import Response

from deployments import constants
from deployments.calls.callbacks import CALLBACK_HEADER, CallbackRefused, check_callback_url
from deployments.calls.core import queue_full
from deployments.calls.json_arguments import JsonArguments
from deployments.calls.records import FINISHED, parse_wait
from deployments.calls.runner import RUNNER_ACTOR_NAME
from deployments.gateway.answers import internal_error
from deployments.gateway.body import BodyError
from deployments.gateway.body_checks import BodyCheckPool, BodyCheckUnavailable
from deployments.gateway.call_waits import CallerStoreCalls, CallWaiters, TooManyWaiters
from deployments.gateway.http import ClientLimits, error_response, json_response, read_body
from deployments.gateway.routing import Route

logger = logging.getLogger("ray.serve.deployments.gateway")


class SpawnedCalls:
    """The spawn and call-record routes of one gateway replica, over the control-plane store."""

    def __init__(self, store: Any, limits: ClientLimits, bodies: BodyCheckPool):
        self.store = store
        self.limits = limits
        self.bodies = bodies
        self.waiters = CallWaiters()
        self.store_calls = CallerStoreCalls()
        self._call_runner: Any = None

    async def follow_finished_calls(self) -> None:
        """Wake this replica's waiting callers as calls finish (runs for the replica's lifetime)."""
        await self.waiters.follow(lambda cursor, wait_s: self.store.finished_calls_after.remote(cursor, wait_s))

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
            body = await self.bodies.arguments(raw)
        except BodyError as exc:
            return error_response(400, exc.error_type, exc.message)
        except BodyCheckUnavailable as exc:
            return error_response(503, "Unavailable", f"{exc}; retry", headers={"Retry-After": "1"})
        callback = request.headers.get(CALLBACK_HEADER)
        if callback is not None:
            allowed = await self.store_calls.run(lambda: self.store.get_setting.remote("callback_allow", []))
            try:
                await asyncio.to_thread(check_callback_url, callback.strip(), allowed)
            except CallbackRefused as exc:
                return error_response(400, "CallbackRefused", str(exc))
        arguments = body.raw if isinstance(body, JsonArguments) else json.dumps(body, separators=(",", ":")).encode()
        try:
            created = await self.store_calls.run(
                lambda: self.store.create_call.remote(
                    app,
                    spec.name,
                    route.target,
                    arguments,
                    callback.strip() if callback else None,
                    spec.queue_bound,
                )
            )
        except Exception:
            return internal_error(f"spawn of {app}/{spec.name}")
        refused = created.get("refused")
        if refused is not None and refused["type"] == "QueueFull":
            full = queue_full(spec.name)
            return error_response(full.status, full.error_type, full.message, headers=full.headers)
        if refused is not None:
            return error_response(refused["status"], refused["type"], refused["message"])
        record = created["record"]
        try:
            self._runner().submit.remote(record["call_id"])
        except Exception as exc:  # the runner's sweep finds the recorded call when it is back
            self._call_runner = None
            logger.warning("raygpu gateway: call runner unavailable (%s); call %s waits for it", exc, record["call_id"])
        location = f"/{app}/{constants.CALLS_ROUTE}/{record['call_id']}"
        return json_response(202, {"call_id": record["call_id"]}, headers={"Location": location})

    async def _record(self, app: str, call_id: str, wait_s: float) -> tuple[str, bytes] | None:
        """(status, record JSON) of a call of `app`, waiting up to `wait_s` for it to finish."""

        def read(after_finish: bool = False) -> Any:
            # a read after the call finished never shares an answer read before it did
            key = (app, call_id, after_finish)
            return self.store_calls.shared(key, lambda: self.store.call_json.remote(call_id, app))

        if wait_s <= 0:
            return await read()
        with self.waiters.waiting(app, call_id) as finished:
            found = await read()
            if found is None or found[0] in FINISHED:
                return found
            try:
                await asyncio.wait_for(finished.wait(), wait_s)
            except TimeoutError:
                return found
        return await read(after_finish=True)

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
            try:
                found = await self._record(app, call_id, wait_s)
            except TooManyWaiters as exc:
                return error_response(
                    503, "TooManyWaiters", f"{exc}; poll without ?wait= or retry", headers={"Retry-After": "1"}
                )
            if found is None:
                return unknown
            return Response(content=found[1], status_code=200, media_type="application/json")
        if request.method == "DELETE":
            previous, record = await self.store_calls.run(lambda: self.store.cancel_call.remote(call_id, app))
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
