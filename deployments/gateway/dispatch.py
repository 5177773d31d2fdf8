"""How the gateway answers an accepted call over HTTP: the sync call, the streamed call (a model
engine's own HTTP API, a generator's items), each sent through the call core
(deployments/calls/core.py), which owns admission, bringing a parked function back, resends and
retries. This module turns the core's answers and errors into HTTP responses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from deployments.calls.context import ATTEMPTS_HEADER, CALL_ID_HEADER
from deployments.calls.core import Answer, CallCore, Opened
from deployments.errors import RemoteCallError, ReplicaLost
from deployments.gateway.answers import engine_process_died, internal_error
from deployments.gateway.http import ClosingStreamingResponse, error_response
from deployments.gateway.routing import Route, RoutingTable
from deployments.gateway.streams import first_unless_disconnected, ndjson_line, sse_event, stream_body
from deployments.spec import DeployedFunction

logger = logging.getLogger("ray.serve.deployments.gateway")


def error_answer(exc: RemoteCallError, call_id: str | None = None) -> Response:
    """The HTTP answer of a call error: its status, its JSON error body, its headers."""
    headers = dict(exc.headers)
    if call_id is not None:
        headers[CALL_ID_HEADER] = call_id
    return error_response(exc.status, exc.error_type, exc.message, headers=headers or None, details=exc.details)


def answer_response(answer: Answer) -> Response:
    return Response(
        content=answer.body,
        status_code=answer.status,
        media_type="application/json",
        headers=answer.response_headers(),
    )


class Dispatcher:
    """Sends accepted calls to their function's replicas through `core`; `table()` is the current
    routing table (the version each answer names)."""

    def __init__(self, core: CallCore, table: Callable[[], RoutingTable]):
        self.core = core
        self.table = table

    async def call(
        self,
        app: str,
        deployed: DeployedFunction,
        method: str | None,
        body: Any,
        bytes_in: int,
        headers: dict[str, str] | None = None,
        call_id: str | None = None,
    ) -> Response:
        try:
            answer = await self.core.call(app, deployed, method, body, bytes_in, headers=headers, call_id=call_id)
            return answer_response(answer)
        except RemoteCallError as exc:
            return error_answer(exc, call_id)
        except Exception:
            return internal_error(f"call of {app}/{deployed.spec.name}")

    async def _open(
        self, route: Route, request: Request, invoke: Callable[[Any, dict[str, str]], Any], call_id: str
    ) -> Opened | Response:
        """Start a streamed call: the opened stream, or the Response that ends the call (499 when
        the client left first, the call error's answer otherwise)."""
        try:
            opened = await self.core.open_stream(
                route.app,
                route.deployed,
                invoke,
                call_id=call_id,
                first=lambda stream, remaining: first_unless_disconnected(stream, request, remaining),
                resend_lost=not route.kind.forwards_http,
            )
        except ReplicaLost as exc:
            if route.kind.forwards_http:  # an engine in the replica's own process died with it
                cause = exc.__cause__ or exc
                return error_response(
                    503,
                    "EngineDied",
                    engine_process_died(route.deployed.spec.name, cause),
                    headers={CALL_ID_HEADER: call_id},
                )
            return error_answer(exc, call_id)
        except RemoteCallError as exc:
            return error_answer(exc, call_id)
        if opened is None:  # the client went away before the replica answered
            return Response(status_code=499)
        return opened

    async def call_engine(
        self, route: Route, request: Request, raw: bytes, release: Callable[[], None], call_id: str
    ) -> tuple[Response, bool]:
        """Forward `/{app}/{name}/v1/...` to a model engine's own HTTP API and stream its answer back.
        Returns the response and whether its body now owns `release` (a stream ends the call when
        it ends, or when the client goes away: then the engine's generation is cancelled too)."""
        app, spec = route.app, route.deployed.spec
        try:
            headers = {k: v for k, v in request.headers.items() if k in ("content-type", "accept")}
            opened = await self._open(
                route,
                request,
                lambda handle, sent: handle.http.remote(
                    request.method, route.target, request.url.query.encode(), {**headers, **sent}, raw, len(raw)
                ),
                call_id,
            )
            if isinstance(opened, Response):
                return opened, False
            response_headers = {k: v for k, v in opened.start["headers"]}
            response_headers["x-raygpu-version"] = str(self.table().apps[app]["version"])
            response_headers[CALL_ID_HEADER] = opened.call_id
            body = stream_body(opened.stream, release, lambda chunk: chunk)
            return ClosingStreamingResponse(body, status_code=opened.start["status"], headers=response_headers), True
        except Exception:
            return internal_error(f"call of {app}/{spec.name}"), False

    async def call_generator(
        self, route: Route, request: Request, body: Any, bytes_in: int, release: Callable[[], None], call_id: str
    ) -> tuple[Response, bool]:
        """Call a function whose body yields: its items stream back as they are produced, one JSON
        value per line (`application/x-ndjson`) or as server-sent events when the client accepts
        `text/event-stream`. A failure after the first item ends the stream with an error item."""
        app, spec = route.app, route.deployed.spec
        try:
            opened = await self._open(
                route,
                request,
                lambda handle, sent: handle.stream.remote(route.target, body, bytes_in, sent),
                call_id,
            )
            if isinstance(opened, Response):
                return opened, False
            start = opened.start
            headers = {
                "x-raygpu-version": str(self.table().apps[app]["version"]),
                CALL_ID_HEADER: opened.call_id,
                ATTEMPTS_HEADER: str(opened.attempts),
            }
            if start["status"] != 200:
                headers.update(dict(start.get("headers") or {}))
                return Response(
                    content=start["body"], status_code=start["status"], media_type="application/json", headers=headers
                ), False
            sse = "text/event-stream" in request.headers.get("accept", "")
            encode = sse_event if sse else ndjson_line
            return ClosingStreamingResponse(
                stream_body(opened.stream, release, encode),
                media_type="text/event-stream" if sse else "application/x-ndjson",
                headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
            ), True
        except Exception:
            return internal_error(f"call of {app}/{spec.name}"), False
