"""The cluster-wide HTTP gateway: one CPU-only Serve application in front of every user app.

Its replicas serve HTTP themselves on the gateway port (Serve's own proxy listens elsewhere).
It answers whatever needs no GPU itself (health, docs, auth, size limits, malformed JSON, unknown
routes, full queues), records each accepted arrival for the autoscaler, and calls the unit's
deployment through a Serve handle (dispatch.py). This module holds the replica's lifecycle, the
routing table it follows and the routing of each request; spawned calls (spawns.py) and the admin
proxy (admin_proxy.py) have modules of their own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from autoscaling.serve_adapter import GATEWAY_INFLIGHT_METRIC, gateway_autoscaling_config
from deployments import constants
from deployments.calls.arrivals import ArrivalRecorder
from deployments.calls.context import CALL_ID_HEADER, INTERNAL_HEADERS, CallIdError, checked_call_id
from deployments.calls.core import CallCore, queue_full
from deployments.gateway.admin_proxy import AdminProxy
from deployments.gateway.answers import internal_error
from deployments.gateway.body import BodyError
from deployments.gateway.body_checks import BodyCheckPool, BodyCheckUnavailable
from deployments.gateway.dispatch import Dispatcher, error_answer
from deployments.gateway.http import (
    ClientLimits,
    EmbeddedServer,
    error_response,
    gateway_config,
    json_response,
    read_body,
    reuse_port_socket,
)
from deployments.gateway.routing import RouteError, RoutingTable, path_parts
from deployments.gateway.spawns import SpawnedCalls
from deployments.store.actor import get_store

logger = logging.getLogger(f"ray.serve.{__name__}")


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
        limits: ClientLimits | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ):
        self.limits = limits = limits or ClientLimits()
        self.store = get_store()
        self.table = RoutingTable(await self.store.routing_table.remote())
        # The gateway follows the parked set, so a call asks the parker only for a parked function.
        self.core = CallCore(parked=lambda app, function: (app, function) in self.table.parked)
        self.arrivals = ArrivalRecorder(
            self.store,
            constants.MAX_PENDING_ARRIVALS,
            constants.IMMEDIATE_ARRIVAL_AFTER_IDLE_S,
            constants.ARRIVAL_FLUSH_INTERVAL_S,
        )
        self.dispatch = Dispatcher(self.core, lambda: self.table)
        self.bodies = BodyCheckPool()
        self.spawned = SpawnedCalls(self.store, limits, self.bodies)
        self.admin = AdminProxy(limits)
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._watch_routing_table()),
            loop.create_task(self.arrivals.ship_forever()),
            loop.create_task(self.spawned.follow_finished_calls()),
        ]
        self._socket = reuse_port_socket(http_host, http_port)
        config = gateway_config(
            self.asgi,
            max_connections=constants.GATEWAY_MAX_CONNECTIONS,
            header_timeout_s=limits.header_timeout_s,
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
        return {GATEWAY_INFLIGHT_METRIC: float(self.core.admission.total())}

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
        bodies = getattr(self, "bodies", None)
        if bodies is not None:
            bodies.close()

    async def _watch_routing_table(self) -> None:
        """Follow the store's routing table (long poll): apps, tokens, versions, parked functions."""
        while True:
            try:
                raw = await self.store.routing_table.remote(self.table.generation, constants.CONFIG_POLL_TIMEOUT_S)
                if raw["generation"] != self.table.generation:
                    self.table = RoutingTable(raw, previous=self.table)
                    # a parked function keeps its handle: its router takes the deployment up again
                    # when the function is brought back
                    self.core.keep_handles({(d.serve_app, d.deployment) for d in self.table.functions.values()})
            except Exception as exc:
                logger.warning("raygpu gateway: routing table refresh failed (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def handle_http(self, request: Request) -> Response:
        parts = path_parts(request.url.path)
        if request.method == "GET" and parts == ["healthz"]:
            return json_response(
                200, {"status": "ok", "generation": self.table.generation, "apps": len(self.table.apps)}
            )
        if parts[:1] == [constants.ADMIN_ROUTE]:
            return await self.admin(request, parts[1:])
        table = self.table
        try:
            app = table.app_of(parts)
            authorization = request.headers.get("authorization", "")
            if not table.authorized(app, authorization) and not (
                # a protected app's spawned calls: read and cancelled with its token or the admin credential
                parts[1:2] == [constants.CALLS_ROUTE]
                and await self.spawned.store_calls.run(lambda: self.admin.accepts(authorization))
            ):
                raise table.unauthorized(app)
            if parts[1:] == ["docs"]:
                if request.method != "GET":
                    raise RouteError(405, "MethodNotAllowed", "use GET for /docs", {"Allow": "GET"})
                return json_response(200, table.openapi(app))
            if parts[1:2] == [constants.CALLS_ROUTE]:
                return await self.spawned.calls(app, request, parts[2:])
            spawned = table.spawn_route(app, parts, request.method)
            if spawned is not None:
                return await self.spawned.spawn(spawned, request)
            route = table.route(app, parts, request.method)
        except RouteError as exc:
            return error_response(exc.status, exc.error_type, exc.message, headers=exc.headers or None)
        try:
            call_id = checked_call_id(request.headers.get(CALL_ID_HEADER))
        except CallIdError as exc:
            return error_response(400, "InvalidCallId", str(exc))
        # Admission comes before the body is read: a full queue costs the caller no upload.
        spec = route.deployed.spec
        key = (app, spec.name)
        if not self.core.admit(app, spec):
            return error_answer(queue_full(spec.name), call_id)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.core.release(app, spec)

        handed_over = False
        try:
            raw = await read_body(request, self.limits)
            if isinstance(raw, Response):
                return raw
            if route.kind.forwards_http:
                self.arrivals.record(app, spec.name, self.core.admission.count(key))
                response, handed_over = await self.dispatch.call_engine(route, request, raw, release, call_id)
                return response
            try:
                body = await self.bodies.arguments(raw)
            except BodyError as exc:
                return error_response(400, exc.error_type, exc.message)
            except BodyCheckUnavailable as exc:
                return error_response(503, "Unavailable", f"{exc}; retry", headers={"Retry-After": "1"})
            self.arrivals.record(app, spec.name, self.core.admission.count(key))
            if spec.streams(route.target):
                response, handed_over = await self.dispatch.call_generator(
                    route, request, body, len(raw), release, call_id
                )
                return response
            forwarded = {
                k: v
                for k, v in request.headers.items()
                if k.startswith(constants.FORWARDED_HEADER_PREFIX) and k not in INTERNAL_HEADERS
            }
            return await self.dispatch.call(app, route.deployed, route.target, body, len(raw), forwarded, call_id)
        finally:
            if not handed_over:
                release()


def build_gateway_application(
    http_host: str,
    http_port: int,
    limits: ClientLimits | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Any:
    """The gateway; with `tls_cert`/`tls_key` (PEM files on the head) it serves HTTPS only."""
    return Gateway.bind(http_host, http_port, limits or ClientLimits(), tls_cert, tls_key)
