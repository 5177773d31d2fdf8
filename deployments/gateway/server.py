"""The cluster-wide HTTP gateway: one CPU-only Serve application in front of every user app.

Its replicas serve HTTP themselves on the gateway port (Serve's own proxy listens elsewhere).
It answers whatever needs no GPU itself (health, docs, auth, size limits, malformed JSON, unknown
routes, full queues), records each accepted arrival for the autoscaler, and calls the unit's
deployment through a Serve handle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.requests import Request
from starlette.responses import Response

from autoscaling.serve_adapter import GATEWAY_INFLIGHT_METRIC, gateway_autoscaling_config
from deployments import constants
from deployments.calls.callbacks import CALLBACK_HEADER, CallbackRefused, check_callback_url
from deployments.calls.records import FINISHED, parse_wait
from deployments.calls.runner import RUNNER_ACTOR_NAME
from deployments.gateway.arrivals import ArrivalBuffer
from deployments.gateway.body import BodyError, parse_arguments
from deployments.gateway.http import (
    ClosingStreamingResponse,
    EmbeddedServer,
    error_response,
    gateway_config,
    json_response,
    reuse_port_socket,
)
from deployments.gateway.routing import Route, RouteError, RoutingTable, path_parts
from deployments.parking import get_parker
from deployments.spec import DeployedFunction
from deployments.store.actor import get_store

logger = logging.getLogger(f"ray.serve.{__name__}")

REPLICA_GONE_ERRORS: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


@serve.deployment(
    name=constants.GATEWAY_DEPLOYMENT_NAME,
    ray_actor_options={
        "num_cpus": 0.5,
        # The gateway port is the head node's: its replicas share it there.
        "resources": {"node:__internal_head__": 0.001},
        # The gateway never blocks its event loop, so its code, its HTTP server and its handles'
        # router share the replica's main loop: no thread hop on the request path.
        "runtime_env": {
            "env_vars": {
                "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
            }
        },
    },
    max_ongoing_requests=1000,
    autoscaling_config=gateway_autoscaling_config(
        target_inflight=constants.GATEWAY_TARGET_INFLIGHT, max_replicas=constants.GATEWAY_MAX_REPLICAS
    ),
)
class Gateway:
    """Terminates HTTP itself (uvicorn on a shared port) so a call crosses one process boundary,
    gateway to function replica, as a plain Serve request crosses proxy to replica."""

    async def __init__(
        self,
        http_host: str,
        http_port: int,
        max_body_bytes: int = constants.MAX_BODY_BYTES,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ):
        self.max_body_bytes = max_body_bytes
        self._admin_api: Any = None
        self._call_runner: Any = None
        self._parker: Any = None
        self.store = get_store()
        self.table = RoutingTable(await self.store.routing_table.remote())
        # Serve handles by (Serve application, deployment): a new version is a new application.
        self.handles: dict[tuple[str, str], Any] = {}
        self.inflight: dict[tuple[str, str], int] = {}
        self.pending_arrivals = ArrivalBuffer(constants.MAX_PENDING_ARRIVALS)
        self._dropped_logged = 0
        self.last_arrival: dict[tuple[str, str], float] = {}
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._watch_routing_table()),
            loop.create_task(self._ship_arrivals()),
        ]
        self._socket = reuse_port_socket(http_host, http_port)
        config = gateway_config(
            self.asgi,
            max_connections=constants.GATEWAY_MAX_CONNECTIONS,
            header_timeout_s=constants.HEADER_TIMEOUT_S,
            keep_alive_s=constants.KEEP_ALIVE_TIMEOUT_S,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
        self._server = EmbeddedServer(config)
        self._server_task = loop.create_task(self._server._serve([self._socket]))
        while not self._server.started:
            if self._server_task.done():
                self._server_task.result()
                raise RuntimeError(f"the gateway's HTTP server on {http_host}:{http_port} stopped at start")
            await asyncio.sleep(0.01)
        logger.info("raygpu gateway listening on %s:%d", http_host, http_port)

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {GATEWAY_INFLIGHT_METRIC: float(sum(self.inflight.values()))}

    async def check_health(self) -> None:
        if self._server_task.done():
            raise RuntimeError("the gateway's HTTP server stopped")

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            response = await self.handle_http(Request(scope, receive))
        except Exception:
            response = internal_error(f"{scope.get('method')} {scope.get('path')}")
        await response(scope, receive, send)

    def __del__(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.should_exit = True
        for task in getattr(self, "_background", []):
            task.cancel()

    # --- background work: routing-table long-poll and arrival shipping ---------------------
    async def _watch_routing_table(self) -> None:
        while True:
            try:
                raw = await self.store.routing_table.remote(self.table.generation, constants.CONFIG_POLL_TIMEOUT_S)
                if raw["generation"] != self.table.generation:
                    self.table = RoutingTable(raw, previous=self.table)
                    # a parked function keeps its handle: its router takes the deployment up again
                    # when the function is brought back
                    live = {(d.serve_app, d.deployment) for d in self.table.functions.values()}
                    self.handles = {k: v for k, v in self.handles.items() if k in live}
            except Exception as exc:
                logger.warning("raygpu gateway: routing table refresh failed (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def _ship_arrivals(self) -> None:
        while True:
            await asyncio.sleep(constants.ARRIVAL_FLUSH_INTERVAL_S)
            if self.pending_arrivals.dropped > self._dropped_logged:
                logger.warning(
                    "raygpu gateway: dropped %d arrival record(s) (%d in all) while the store was away; "
                    "the autoscaler's history misses them",
                    self.pending_arrivals.dropped - self._dropped_logged,
                    self.pending_arrivals.dropped,
                )
                self._dropped_logged = self.pending_arrivals.dropped
            if not len(self.pending_arrivals):
                continue
            batch = self.pending_arrivals.take()
            try:
                await self.store.record_arrivals.remote(batch)
            except Exception as exc:
                logger.warning("raygpu gateway: could not record %d arrivals (%s); will retry", len(batch), exc)
                self.pending_arrivals.put_back(batch)

    def _admit(self, app: str, deployed: DeployedFunction) -> bool:
        """Take a call in flight unless the function's replicas and queue are full; the caller
        decrements `inflight` when the call ends. The call is an arrival for the autoscaler only
        once its body is accepted (`_arrival`): a refused body never wakes a replica."""
        spec = deployed.spec
        key = (app, spec.name)
        if self.inflight.get(key, 0) >= spec.queue_bound:
            return False
        self.inflight[key] = self.inflight.get(key, 0) + 1
        return True

    def _arrival(self, app: str, function: str, key: tuple[str, str]) -> None:
        """Record an accepted call for the autoscaler. The first call in flight may be a call at
        zero replicas: it goes to the store at once, which wakes the autoscaler's open long poll,
        instead of waiting for the next batch and the next metrics push. Calls to a function that
        was called within the last second are batched: it cannot be at zero."""
        now = time.time()
        arrival = (app, function, now)
        previous = self.last_arrival.get(key, 0.0)
        self.last_arrival[key] = now
        if self.inflight.get(key, 0) <= 1 and now - previous > constants.IMMEDIATE_ARRIVAL_AFTER_IDLE_S:
            try:
                self.store.record_arrivals.remote([arrival])
                return
            except Exception:
                pass
        self.pending_arrivals.add(arrival)

    # --- request path ----------------------------------------------------------------------
    async def _bring_back(self, app: str, deployed: DeployedFunction, parked_under_us: bool = False) -> Response | None:
        """Bring a parked function back into Serve before calling it (deployments/parking.py);
        None when it is in Serve, or the answer when it cannot come back. `parked_under_us`: its
        deployment went away during a call, whatever the routing table says yet."""
        if not parked_under_us and (app, deployed.spec.name) not in self.table.parked:
            return None
        try:
            if self._parker is None:
                self._parker = get_parker()
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

    async def _retry_unavailable(
        self, app: str, deployed: DeployedFunction, brought_back: float
    ) -> tuple[Response | None, float]:
        """A call whose deployment Serve says is gone: parked between the routing table's word and
        the call, or brought back while this handle's router still has Serve's word that it was
        gone. The first time it is brought back; then the call is sent again (after a pause) until
        the router has caught up, for ROUTER_CATCH_UP_S. Returns (the answer ending the call, or
        None to send it again; when it was brought back)."""
        if not brought_back:
            refused = await self._bring_back(app, deployed, parked_under_us=True)
            if refused is not None:
                return refused, brought_back
            brought_back = time.monotonic()
        elif time.monotonic() - brought_back > constants.ROUTER_CATCH_UP_S:
            return self._unavailable(deployed.spec.name), brought_back
        await asyncio.sleep(constants.DRAINING_RETRY_S)
        return None, brought_back

    def _unavailable(self, function: str) -> Response:
        return error_response(
            503,
            "Unavailable",
            f"{function!r} left Serve during the call and could not be reached again; retry shortly",
            headers={"Retry-After": str(constants.RETRY_AFTER_S)},
        )

    def _handle(self, app: str, deployed: DeployedFunction) -> Any:
        key = (deployed.serve_app, deployed.deployment)
        handle = self.handles.get(key)
        if handle is None:
            handle = serve.get_deployment_handle(deployed.deployment, app_name=deployed.serve_app)
            self.handles[key] = handle
        return handle

    async def _read_body(self, request: Request) -> bytes | Response:
        """The whole body, or the answer refusing it: 413 past the size limit (read before only as
        far as needed for the client to see it), 408 when it does not arrive in time."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._too_large(request)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(constants.BODY_TIMEOUT_S):
                while True:
                    message = await request.receive()
                    if message["type"] == "http.disconnect":
                        return Response(status_code=499)  # nobody is listening for an answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        return await self._too_large(request)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            return error_response(
                408,
                "RequestTimeout",
                f"the request body did not arrive within {constants.BODY_TIMEOUT_S:g} s",
                headers={"Connection": "close"},
            )

    async def _admin(self, request: Request, parts: list[str]) -> Response:
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
        raw = await self._read_body(request)
        if isinstance(raw, Response):
            return raw
        try:
            if self._admin_api is None:
                self._admin_api = ray.get_actor(constants.ADMIN_API_ACTOR_NAME, namespace=constants.RAY_NAMESPACE)
            status, body = await self._admin_api.handle.remote(credential.strip(), parts[1], raw)
        except Exception as exc:
            self._admin_api = None
            logger.warning("raygpu gateway: the admin API is unavailable (%s)", exc)
            return error_response(503, "AdminApiUnavailable", "the control plane's admin API is not running; retry")
        return Response(content=body, status_code=status, media_type="application/json")

    async def _too_large(self, request: Request) -> Response:
        """413, closing the connection. A client waiting on `Expect: 100-continue` (curl) is answered
        at once; one that sends the whole body first (requests, urllib) has it read and discarded,
        up to a bound, so it reads the 413 instead of a reset connection."""
        if "100-continue" not in request.headers.get("expect", "").lower():
            drained = 0
            try:
                async with asyncio.timeout(constants.BODY_TIMEOUT_S):
                    while drained <= constants.MAX_DRAIN_BYTES:
                        message = await request.receive()
                        if message["type"] == "http.disconnect":
                            break
                        drained += len(message.get("body", b""))
                        if not message.get("more_body", False):
                            break
            except TimeoutError:
                pass
        return error_response(
            413,
            "PayloadTooLarge",
            f"request body exceeds the gateway limit of {self.max_body_bytes} bytes",
            headers={"Connection": "close"},
        )

    async def handle_http(self, request: Request) -> Response:
        parts = path_parts(request.url.path)
        if request.method == "GET" and parts == ["healthz"]:
            return json_response(
                200, {"status": "ok", "generation": self.table.generation, "apps": len(self.table.apps)}
            )
        if parts[:1] == [constants.ADMIN_ROUTE]:
            return await self._admin(request, parts[1:])
        table = self.table
        try:
            app = table.app_of(parts)
            if not table.authorized(app, request.headers.get("authorization", "")):
                raise table.unauthorized(app)
            if parts[1:] == ["docs"]:
                if request.method != "GET":
                    raise RouteError(405, "MethodNotAllowed", "use GET for /docs", {"Allow": "GET"})
                return json_response(200, table.openapi(app))
            if parts[1:2] == [constants.CALLS_ROUTE]:
                return await self._calls(app, request, parts[2:])
            spawned = table.spawn_route(app, parts, request.method)
            if spawned is not None:
                return await self._spawn(spawned, request)
            route = table.route(app, parts, request.method)
        except RouteError as exc:
            return error_response(exc.status, exc.error_type, exc.message, headers=exc.headers or None)
        # Admission comes before the body is read: a full queue costs the caller no upload.
        if not self._admit(app, route.deployed):
            return self._queue_full(route.deployed.spec.name)
        key = (app, route.deployed.spec.name)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.inflight[key] -= 1

        handed_over = False
        try:
            raw = await self._read_body(request)
            if isinstance(raw, Response):
                return raw
            if route.kind.forwards_http:
                self._arrival(app, route.deployed.spec.name, key)
                response, handed_over = await self._call_engine(route, request, raw, release)
                return response
            try:
                body = parse_arguments(raw)
            except BodyError as exc:
                return error_response(400, exc.error_type, exc.message)
            self._arrival(app, route.deployed.spec.name, key)
            if route.deployed.spec.streams(route.target):
                response, handed_over = await self._call_generator(route, request, body, len(raw), release)
                return response
            forwarded = {k: v for k, v in request.headers.items() if k.startswith(constants.FORWARDED_HEADER_PREFIX)}
            return await self._call(app, route.deployed, route.target, body, len(raw), forwarded)
        finally:
            if not handed_over:
                release()

    async def _call(
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
            refused = await self._bring_back(app, deployed)
            if refused is not None:
                return refused
            handle = self._handle(app, deployed)
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
                    return self._queue_full(spec.name)
                except DeploymentUnavailableError:
                    refused, brought_back = await self._retry_unavailable(app, deployed, brought_back)
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

    # --- spawned calls ---------------------------------------------------------------------
    def _runner(self) -> Any:
        if self._call_runner is None:
            self._call_runner = ray.get_actor(RUNNER_ACTOR_NAME, namespace=constants.RAY_NAMESPACE)
        return self._call_runner

    async def _spawn(self, route: Route, request: Request) -> Response:
        """`POST /{app}/{fn}/spawn`: record the call and answer 202 with its id at once; the call
        runner runs it, and posts the final record to `x-raygpu-callback` when one is given."""
        app, spec = route.app, route.deployed.spec
        raw = await self._read_body(request)
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
            return self._queue_full(spec.name)
        try:
            self._runner().submit.remote(record["call_id"])
        except Exception as exc:  # the runner's sweep finds the recorded call when it is back
            self._call_runner = None
            logger.warning("raygpu gateway: call runner unavailable (%s); call %s waits for it", exc, record["call_id"])
        location = f"/{app}/{constants.CALLS_ROUTE}/{record['call_id']}"
        return json_response(202, {"call_id": record["call_id"]}, headers={"Location": location})

    async def _calls(self, app: str, request: Request, rest: list[str]) -> Response:
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

    async def _open_stream(
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
            stream = invoke(self._handle(app, route.deployed).options(stream=True))
            try:
                start = await _first_unless_disconnected(stream, request, max(deadline - time.monotonic(), 0.001))
                if start is None:  # the client went away before the replica answered
                    stream.cancel()
                    return Response(status_code=499)
            except BackPressureError:
                return self._queue_full(spec.name)
            except DeploymentUnavailableError:
                refused, brought_back = await self._retry_unavailable(app, route.deployed, brought_back)
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

    def _stream_body(self, stream: Any, release: Callable[[], None], encode: Callable[[Any], bytes]) -> Any:
        """The body of a streamed answer: each item encoded as it arrives. The call ends when the
        stream does, or when the client goes away: then the replica's generation is cancelled."""

        async def body() -> Any:
            finished = False
            try:
                async for chunk in stream:
                    yield encode(chunk)
                finished = True
            finally:
                if not finished:
                    stream.cancel()
                release()

        return body()

    async def _call_engine(
        self, route: Route, request: Request, raw: bytes, release: Callable[[], None]
    ) -> tuple[Response, bool]:
        """Forward `/{app}/{name}/v1/...` to a model engine's own HTTP API and stream its answer back.
        Returns the response and whether its body now owns `release` (a stream ends the call when
        it ends, or when the client goes away: then the engine's generation is cancelled too)."""
        app, spec = route.app, route.deployed.spec
        try:
            refused = await self._bring_back(app, route.deployed)
            if refused is not None:
                return refused, False
            headers = {k: v for k, v in request.headers.items() if k in ("content-type", "accept")}
            opened = await self._open_stream(
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
            response_headers["x-raygpu-version"] = str(self.table.apps[app]["version"])
            body = self._stream_body(stream, release, lambda chunk: chunk)
            return ClosingStreamingResponse(body, status_code=start["status"], headers=response_headers), True
        except Exception:
            return internal_error(f"call of {app}/{spec.name}"), False

    async def _call_generator(
        self, route: Route, request: Request, body: Any, bytes_in: int, release: Callable[[], None]
    ) -> tuple[Response, bool]:
        """Call a function whose body yields: its items stream back as they are produced, one JSON
        value per line (`application/x-ndjson`) or as server-sent events when the client accepts
        `text/event-stream`. A failure after the first item ends the stream with an error item."""
        app, spec = route.app, route.deployed.spec
        try:
            refused = await self._bring_back(app, route.deployed)
            if refused is not None:
                return refused, False
            opened = await self._open_stream(
                route, request, lambda handle: handle.stream.remote(route.target, body, bytes_in, {})
            )
            if isinstance(opened, Response):
                return opened, False
            stream, start = opened
            version = {"x-raygpu-version": str(self.table.apps[app]["version"])}
            if start["status"] != 200:
                return Response(
                    content=start["body"], status_code=start["status"], media_type="application/json", headers=version
                ), False
            sse = "text/event-stream" in request.headers.get("accept", "")
            encode = _sse_event if sse else _ndjson_line
            return ClosingStreamingResponse(
                self._stream_body(stream, release, encode),
                media_type="text/event-stream" if sse else "application/x-ndjson",
                headers={**version, "cache-control": "no-cache", "x-accel-buffering": "no"},
            ), True
        except Exception:
            return internal_error(f"call of {app}/{spec.name}"), False

    @staticmethod
    def _queue_full(name: str) -> Response:
        return error_response(
            503,
            "QueueFull",
            f"{name!r} has as many queued calls as its max_queue allows; retry after {constants.RETRY_AFTER_S} s",
            headers={"Retry-After": str(constants.RETRY_AFTER_S)},
        )


def _ndjson_line(chunk: tuple[str, Any]) -> bytes:
    """A generator's item (or final error) as one line of JSON."""
    kind, value = chunk
    if kind == "error":
        return json.dumps(value, separators=(",", ":")).encode() + b"\n"
    return value + b"\n"


def _sse_event(chunk: tuple[str, Any]) -> bytes:
    """A generator's item as a server-sent event (`event: error` for its final error)."""
    kind, value = chunk
    if kind == "error":
        return b"event: error\ndata: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"
    return b"data: " + value + b"\n\n"


def engine_process_died(name: str, exc: BaseException) -> str:
    """What a caller learns when the replica process running an engine died under its call: Ray's
    account of the exit, and the usual cause of an engine that dies in its first forward pass."""
    detail = str(getattr(exc, "error_msg", "") or exc)
    exit_detail = detail.partition("Worker exit detail:")[2].split(".")[0].strip()
    return (
        f"the replica running the engine of {name!r} died during the call"
        + (f" ({exit_detail})" if exit_detail else f" ({type(exc).__name__})")
        + "; a process killed by a signal in its engine's first forward pass on a CPU host is most often an "
        "instruction the CPU advertises but cannot run: `raygpu doctor` shows what the host runs, and "
        "RAYGPU_CPU_CAPS=amx=0 or engine_args dtype='float32' avoids it; `raygpu logs` has the replica's output"
    )


def internal_error(what: str) -> Response:
    """raygpu's own failure: 500 with a short id the gateway log holds next to the traceback; the
    exception text stays in the log."""
    error_id = secrets.token_hex(4)
    logger.exception("raygpu gateway: %s failed [error id %s]", what, error_id)
    return error_response(
        500,
        "InternalError",
        f"raygpu failed on this request; the gateway log has the details under error id {error_id}",
        error_id=error_id,
    )


async def _first_unless_disconnected(stream: Any, request: Request, timeout_s: float) -> Any:
    """The stream's first item, or None as soon as the client disconnects (its body was read, so
    the next ASGI message can only be the disconnect). TimeoutError past `timeout_s`."""
    first = asyncio.ensure_future(stream.__anext__())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({first, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if first in done:
            return first.result()
        if gone in done:
            first.cancel()
            return None
        first.cancel()
        raise TimeoutError
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _await(response: Any) -> Any:
    return await response


def build_gateway_application(
    http_host: str,
    http_port: int,
    max_body_bytes: int = constants.MAX_BODY_BYTES,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Any:
    """The gateway; with `tls_cert`/`tls_key` (PEM files on the head) it serves HTTPS only."""
    return Gateway.bind(http_host, http_port, max_body_bytes, tls_cert, tls_key)
