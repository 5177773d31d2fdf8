"""How the gateway calls a function's replicas: bringing a parked function back, the sync call, the
streamed call (a model engine's own HTTP API, a generator's items) and the resends each does
(a replica being replaced, a deployment parked or replaced under the call, a replica that died).

The Serve handles, the parker and the routing table come in as parameters, so tests drive every
path here in-process with fakes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.requests import Request
from starlette.responses import Response

from deployments import constants
from deployments.gateway.answers import engine_process_died, internal_error, queue_full, unavailable
from deployments.gateway.http import ClosingStreamingResponse, error_response
from deployments.gateway.routing import Route, RoutingTable
from deployments.gateway.streams import first_unless_disconnected, ndjson_line, sse_event, stream_body
from deployments.spec import DeployedFunction

logger = logging.getLogger("ray.serve.deployments.gateway")

REPLICA_GONE_ERRORS: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


class Dispatcher:
    """Sends accepted calls to their function's replicas. `handle_of(app, deployed)` gives the
    function's Serve handle, `parker_of()` the parker actor, `table()` the current routing table."""

    def __init__(
        self,
        handle_of: Callable[[str, DeployedFunction], Any],
        parker_of: Callable[[], Any],
        table: Callable[[], RoutingTable],
    ):
        self.handle_of = handle_of
        self.parker_of = parker_of
        self.table = table
        self._parker: Any = None

    async def bring_back(self, app: str, deployed: DeployedFunction, parked_under_us: bool = False) -> Response | None:
        """Bring a parked function back into Serve before calling it (deployments/parking.py);
        None when it is in Serve, or the answer when it cannot come back. `parked_under_us`: its
        deployment went away during a call, whatever the routing table says yet."""
        if not parked_under_us and (app, deployed.spec.name) not in self.table().parked:
            return None
        try:
            if self._parker is None:
                self._parker = self.parker_of()
            back = await self._parker.unpark.remote(app, deployed.spec.name)
        except Exception as exc:
            self._parker = None
            logger.warning("raygpu gateway: could not bring %s/%s back (%s)", app, deployed.spec.name, exc)
            return error_response(
                503,
                "Unavailable",
                f"{deployed.spec.name!r} is at rest out of Serve and the control plane could not bring it "
                "back just now; retry shortly",
                headers={"Retry-After": str(constants.RETRY_AFTER_S)},
            )
        if not back:
            return error_response(404, "NotFound", f"{app}/{deployed.spec.name} is no longer deployed")
        return None

    async def retry_unavailable(
        self, app: str, deployed: DeployedFunction, brought_back: float
    ) -> tuple[Response | None, float]:
        """A call whose deployment Serve says is gone: parked between the routing table's word and
        the call, or brought back while this handle's router still has Serve's word that it was
        gone. The first time it is brought back; then the call is sent again (after a pause) until
        the router has caught up, for ROUTER_CATCH_UP_S. Returns (the answer ending the call, or
        None to send it again; when it was brought back)."""
        if not brought_back:
            refused = await self.bring_back(app, deployed, parked_under_us=True)
            if refused is not None:
                return refused, brought_back
            brought_back = time.monotonic()
        elif time.monotonic() - brought_back > constants.ROUTER_CATCH_UP_S:
            return unavailable(deployed.spec.name), brought_back
        await asyncio.sleep(constants.DRAINING_RETRY_S)
        return None, brought_back

    async def call(
        self,
        app: str,
        deployed: DeployedFunction,
        method: str | None,
        body: Any,
        bytes_in: int,
        headers: dict[str, str] | None = None,
    ) -> Response:
        spec = deployed.spec
        budget = spec.timeout + spec.startup_timeout
        deadline = time.monotonic() + budget
        try:
            refused = await self.bring_back(app, deployed)
            if refused is not None:
                return refused
            handle = self.handle_of(app, deployed)
            attempts = spec.retries + 1
            attempt = 0
            # A replica being replaced (a sync call of it passed its timeout) answers at once that it
            # takes no calls; such a call is sent again, to the replacement, within its own deadline,
            # and a replica found gone after that is part of the same replacement, not a failure.
            replacing = False
            brought_back = 0.0
            while True:
                response = handle.remote(method, body, bytes_in, headers or {})
                try:
                    status, payload, version, extra_headers = await asyncio.wait_for(
                        _await(response), timeout=max(deadline - time.monotonic(), 0.001)
                    )
                except BackPressureError:
                    return queue_full(spec.name)
                except DeploymentUnavailableError:
                    refused, brought_back = await self.retry_unavailable(app, deployed, brought_back)
                    if refused is not None:
                        return refused
                    continue
                except TimeoutError:
                    response.cancel()
                    return error_response(
                        504,
                        "Timeout",
                        f"no replica of {spec.name!r} answered within {budget:g} s "
                        "(timeout plus startup_timeout); `raygpu status` shows its replicas",
                    )
                except REPLICA_GONE_ERRORS as exc:
                    if replacing and time.monotonic() < deadline:
                        await asyncio.sleep(constants.DRAINING_RETRY_S)
                        continue
                    attempt += 1
                    if attempt < attempts:
                        logger.warning("raygpu gateway: replica of %s/%s died; retrying", app, spec.name)
                        continue
                    return error_response(
                        500,
                        "ReplicaDied",
                        f"the replica running {spec.name!r} exited during the "
                        f"call ({type(exc).__name__}) after {attempts} attempt(s); set `retries=` "
                        "to retry such calls, and see `raygpu logs`",
                    )
                if constants.DRAINING_HEADER in extra_headers and time.monotonic() < deadline:
                    replacing = True
                    await asyncio.sleep(constants.DRAINING_RETRY_S)
                    continue
                extra_headers.pop(constants.DRAINING_HEADER, None)
                return Response(
                    content=payload,
                    status_code=status,
                    media_type="application/json",
                    headers={"x-raygpu-version": str(version), **extra_headers},
                )
        except Exception:
            return internal_error(f"call of {app}/{spec.name}")

    async def open_stream(
        self, route: Route, request: Request, invoke: Callable[[Any], Any]
    ) -> tuple[Any, Any] | Response:
        """Start a streamed call (`invoke` sends it through the streaming handle it is given): the
        stream and its first item (the answer's start), or the Response that ends the call: 499 when
        the client left first, 503 when the queue is full, 504 past the deadline, 500 when the
        replica died on every attempt. A replica being replaced answers that at once; the call then
        goes to its replacement. A function parked as the call was sent is brought back once."""
        app, spec = route.app, route.deployed.spec
        budget = spec.timeout + spec.startup_timeout
        deadline = time.monotonic() + budget
        attempt = 0
        brought_back = 0.0
        while True:
            stream = invoke(self.handle_of(app, route.deployed).options(stream=True))
            try:
                start = await first_unless_disconnected(stream, request, max(deadline - time.monotonic(), 0.001))
                if start is None:  # the client went away before the replica answered
                    stream.cancel()
                    return Response(status_code=499)
            except BackPressureError:
                return queue_full(spec.name)
            except DeploymentUnavailableError:
                refused, brought_back = await self.retry_unavailable(app, route.deployed, brought_back)
                if refused is not None:
                    return refused
                continue
            except TimeoutError:
                stream.cancel()
                return error_response(504, "Timeout", f"no replica of {spec.name!r} answered within {budget:g} s")
            except REPLICA_GONE_ERRORS as exc:
                attempt += 1
                if attempt <= spec.retries:
                    continue
                if route.kind.forwards_http:  # an engine in the replica's own process died with it
                    return error_response(503, "EngineDied", engine_process_died(spec.name, exc))
                return error_response(
                    500,
                    "ReplicaDied",
                    f"the replica running {spec.name!r} exited during the "
                    f"call ({type(exc).__name__}); see `raygpu logs {app}/{spec.name}`",
                )
            if constants.DRAINING_HEADER in dict(start.get("headers") or {}) and time.monotonic() < deadline:
                await asyncio.sleep(constants.DRAINING_RETRY_S)
                continue
            return stream, start

    async def call_engine(
        self, route: Route, request: Request, raw: bytes, release: Callable[[], None]
    ) -> tuple[Response, bool]:
        """Forward `/{app}/{name}/v1/...` to a model engine's own HTTP API and stream its answer back.
        Returns the response and whether its body now owns `release` (a stream ends the call when
        it ends, or when the client goes away: then the engine's generation is cancelled too)."""
        app, spec = route.app, route.deployed.spec
        try:
            refused = await self.bring_back(app, route.deployed)
            if refused is not None:
                return refused, False
            headers = {k: v for k, v in request.headers.items() if k in ("content-type", "accept")}
            opened = await self.open_stream(
                route,
                request,
                lambda handle: handle.http.remote(
                    request.method, route.target, request.url.query.encode(), headers, raw, len(raw)
                ),
            )
            if isinstance(opened, Response):
                return opened, False
            stream, start = opened
            response_headers = {k: v for k, v in start["headers"]}
            response_headers["x-raygpu-version"] = str(self.table().apps[app]["version"])
            body = stream_body(stream, release, lambda chunk: chunk)
            return ClosingStreamingResponse(body, status_code=start["status"], headers=response_headers), True
        except Exception:
            return internal_error(f"call of {app}/{spec.name}"), False

    async def call_generator(
        self, route: Route, request: Request, body: Any, bytes_in: int, release: Callable[[], None]
    ) -> tuple[Response, bool]:
        """Call a function whose body yields: its items stream back as they are produced, one JSON
        value per line (`application/x-ndjson`) or as server-sent events when the client accepts
        `text/event-stream`. A failure after the first item ends the stream with an error item."""
        app, spec = route.app, route.deployed.spec
        try:
            refused = await self.bring_back(app, route.deployed)
            if refused is not None:
                return refused, False
            opened = await self.open_stream(
                route, request, lambda handle: handle.stream.remote(route.target, body, bytes_in, {})
            )
            if isinstance(opened, Response):
                return opened, False
            stream, start = opened
            version = {"x-raygpu-version": str(self.table().apps[app]["version"])}
            if start["status"] != 200:
                return Response(
                    content=start["body"], status_code=start["status"], media_type="application/json", headers=version
                ), False
            sse = "text/event-stream" in request.headers.get("accept", "")
            encode = sse_event if sse else ndjson_line
            return ClosingStreamingResponse(
                stream_body(stream, release, encode),
                media_type="text/event-stream" if sse else "application/x-ndjson",
                headers={**version, "cache-control": "no-cache", "x-accel-buffering": "no"},
            ), True
        except Exception:
            return internal_error(f"call of {app}/{spec.name}"), False


async def _await(response: Any) -> Any:
    return await response
