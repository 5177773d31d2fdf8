"""The cluster-wide HTTP gateway: one CPU-only Serve application in front of every user app.

Its replicas serve HTTP themselves on the gateway port (Serve's own proxy listens elsewhere).
It answers whatever needs no GPU itself (health, docs, auth, size limits, malformed JSON, unknown
routes, full queues), records each accepted arrival for the autoscaler, and calls the function's
deployment through a Serve handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import time
from typing import Any, Iterator

import ray
import uvicorn
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from autoscaling.serve_adapter import GATEWAY_INFLIGHT_METRIC, gateway_autoscaling_config
from deployments import constants
from deployments.spec import DeployedFunction
from deployments.store import get_store

logger = logging.getLogger("ray.serve")

REPLICA_GONE_ERRORS: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=json.dumps(payload, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(status: int, error_type: str, message: str, headers: dict[str, str] | None = None,
                   details: Any = None) -> Response:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details is not None:
        error["details"] = details
    return json_response(status, {"error": error}, headers)


class RoutingTable:
    """The gateway's view of live apps, rebuilt whenever the store's generation moves."""

    def __init__(self, raw: dict[str, Any]):
        self.generation: int = raw["generation"]
        self.apps: dict[str, dict[str, Any]] = {}
        self.functions: dict[tuple[str, str], DeployedFunction] = {}
        for name, app in raw["apps"].items():
            self.apps[name] = app
            for entry in app["functions"]:
                deployed = DeployedFunction.model_validate(entry)
                self.functions[(name, deployed.spec.name)] = deployed
        self.token_hashes: dict[str, set[str]] = {app: set(h) for app, h in raw["token_hashes"].items()}

    def openapi(self, app: str) -> dict[str, Any]:
        """An OpenAPI 3.1 document of one app, built from the functions' pydantic signatures."""
        paths: dict[str, Any] = {}
        for (app_name, _), deployed in sorted(self.functions.items()):
            if app_name != app:
                continue
            for route in deployed.routes:
                paths[route.path] = {
                    "post": {
                        "operationId": route.path.strip("/").replace("/", "__"),
                        "summary": (route.doc or "").strip().split("\n")[0] or None,
                        "description": route.doc,
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": route.input_schema}},
                        },
                        "responses": {
                            "200": {"description": "Result", "content": {"application/json": {"schema": route.output_schema}}},
                            "422": {"description": "Arguments do not match the signature"},
                            "500": {"description": "The function raised"},
                            "503": {"description": "Queue full; retry after Retry-After seconds"},
                            "504": {"description": "The call exceeded its timeout"},
                        },
                    }
                }
        security = {"bearerAuth": []} if self.token_hashes.get(app) else None
        doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": f"raygpu app {app}", "version": str(self.apps[app]["version"])},
            "paths": paths,
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
        }
        if security:
            doc["security"] = [security]
        return doc


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside a replica: the actor process owns its signals, not the HTTP server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that every gateway replica on the node binds at once (SO_REUSEPORT):
    the kernel spreads connections across them, and a replacement replica binds before the old
    one leaves, so a rolling restart of the gateway refuses no connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@serve.deployment(
    name=constants.GATEWAY_DEPLOYMENT_NAME,
    ray_actor_options={
        "num_cpus": 0.5,
        # The gateway port is the head node's: its replicas share it there.
        "resources": {"node:__internal_head__": 0.001},
        # The gateway never blocks its event loop, so its code, its HTTP server and its handles'
        # router share the replica's main loop: no thread hop on the request path.
        "runtime_env": {"env_vars": {
            "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        }},
    },
    max_ongoing_requests=1000,
    autoscaling_config=gateway_autoscaling_config(
        target_inflight=constants.GATEWAY_TARGET_INFLIGHT, max_replicas=constants.GATEWAY_MAX_REPLICAS
    ),
)
class Gateway:
    """Terminates HTTP itself (uvicorn on a shared port) so a call crosses one process boundary,
    gateway to function replica, as a plain Serve request crosses proxy to replica."""

    async def __init__(self, http_host: str, http_port: int, max_body_bytes: int = constants.MAX_BODY_BYTES):
        self.max_body_bytes = max_body_bytes
        self.store = get_store()
        self.table = RoutingTable(await self.store.routing_table.remote())
        self.handles: dict[tuple[str, str], Any] = {}
        self.inflight: dict[tuple[str, str], int] = {}
        self.pending_arrivals: list[tuple[str, str, float]] = []
        self.last_arrival: dict[tuple[str, str], float] = {}
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._watch_routing_table()),
            loop.create_task(self._ship_arrivals()),
        ]
        self._socket = reuse_port_socket(http_host, http_port)
        config = uvicorn.Config(
            self.asgi, lifespan="off", access_log=False, log_level="warning", loop="none",
            timeout_keep_alive=60, server_header=False, log_config=None, interface="asgi3", proxy_headers=False,
        )
        self._server = _EmbeddedServer(config)
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
        except Exception as exc:
            logger.exception("raygpu gateway: request failed")
            response = error_response(500, "InternalError", f"the gateway failed: {type(exc).__name__}: {exc}")
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
                    self.table = RoutingTable(raw)
                    self.handles = {k: v for k, v in self.handles.items() if k in self.table.functions}
            except Exception as exc:
                logger.warning("raygpu gateway: routing table refresh failed (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def _ship_arrivals(self) -> None:
        while True:
            await asyncio.sleep(constants.ARRIVAL_FLUSH_INTERVAL_S)
            if not self.pending_arrivals:
                continue
            batch, self.pending_arrivals = self.pending_arrivals, []
            try:
                await self.store.record_arrivals.remote(batch)
            except Exception as exc:
                logger.warning("raygpu gateway: could not record %d arrivals (%s); will retry", len(batch), exc)
                self.pending_arrivals = batch + self.pending_arrivals

    def _admit(self, app: str, deployed: DeployedFunction) -> bool:
        """Take a call in flight unless the function's replicas and queue are full; the caller
        decrements `inflight` when the call ends."""
        spec = deployed.spec
        key = (app, spec.name)
        if self.inflight.get(key, 0) >= spec.max_containers * spec.max_inputs + spec.max_queue:
            return False
        self._arrival(app, spec.name, key)
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
        if self.inflight.get(key, 0) == 0 and now - previous > constants.IMMEDIATE_ARRIVAL_AFTER_IDLE_S:
            try:
                self.store.record_arrivals.remote([arrival])
                return
            except Exception:
                pass
        self.pending_arrivals.append(arrival)

    async def refresh(self) -> int:
        """Fetch the routing table now (used by the CLI right after a change)."""
        self.table = RoutingTable(await self.store.routing_table.remote())
        return self.table.generation

    # --- request path ----------------------------------------------------------------------
    def _handle(self, app: str, deployed: DeployedFunction) -> Any:
        key = (app, deployed.spec.name)
        handle = self.handles.get(key)
        if handle is None:
            handle = serve.get_deployment_handle(deployed.deployment, app_name=deployed.serve_app)
            self.handles[key] = handle
        return handle

    def _authorized(self, app: str, request: Request) -> bool:
        hashes = self.table.token_hashes.get(app)
        if not hashes:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return hashlib.sha256(token.strip().encode()).hexdigest() in hashes

    async def _read_body(self, request: Request) -> bytes | None:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle_http(self, request: Request) -> Response:
        parts = [p for p in request.url.path.split("/") if p]
        if request.method == "GET" and parts == ["healthz"]:
            return json_response(200, {"status": "ok", "generation": self.table.generation,
                                       "apps": len(self.table.apps)})
        if not parts:
            return error_response(404, "NotFound", "no route here; call POST /{app}/{function} "
                                  "(`raygpu ls` lists the deployed apps)")
        app = parts[0]
        if app not in self.table.apps:
            return error_response(404, "NotFound", f"app {app!r} is not deployed; `raygpu ls` lists the deployed apps")
        if not self._authorized(app, request):
            return error_response(401, "Unauthorized", f"app {app!r} needs a valid 'Authorization: Bearer <token>' "
                                  "header; create one with `raygpu token create " + app + "`",
                                  headers={"WWW-Authenticate": "Bearer"})
        if len(parts) == 2 and parts[1] == "docs":
            if request.method != "GET":
                return error_response(405, "MethodNotAllowed", "use GET for /docs", headers={"Allow": "GET"})
            return json_response(200, self.table.openapi(app))
        engine = self.table.functions.get((app, parts[1])) if len(parts) >= 2 else None
        if engine is not None and engine.spec.kind == "vllm":
            return await self._call_engine(app, engine, request, parts[2:])
        if len(parts) not in (2, 3):
            return error_response(404, "NotFound", f"no route {request.url.path!r}; routes are "
                                  f"POST /{app}/{{function}} and POST /{app}/{{Class}}/{{method}}")
        deployed = self.table.functions.get((app, parts[1]))
        if deployed is None:
            known = ", ".join(sorted(f for a, f in self.table.functions if a == app))
            return error_response(404, "NotFound", f"app {app!r} has no function or class {parts[1]!r}; it has: {known}")
        spec = deployed.spec
        method: str | None = None
        if spec.kind == "class":
            if len(parts) != 3 or parts[2] not in spec.methods:
                wanted = parts[2] if len(parts) == 3 else "(none)"
                return error_response(404, "NotFound", f"class {spec.name!r} has no method {wanted!r}; "
                                      f"methods: {', '.join(spec.methods)} (POST /{app}/{spec.name}/{{method}})")
            method = parts[2]
        elif len(parts) != 2:
            return error_response(404, "NotFound", f"{spec.name!r} is a function: call POST /{app}/{spec.name}")
        if request.method != "POST":
            return error_response(405, "MethodNotAllowed", f"call {request.url.path} with POST",
                                  headers={"Allow": "POST"})
        raw = await self._read_body(request)
        if raw is None:
            return error_response(413, "PayloadTooLarge",
                                  f"request body exceeds the gateway limit of {self.max_body_bytes} bytes")
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return error_response(400, "MalformedJSON", f"request body is not valid JSON: {exc}")
        forwarded = {k: v for k, v in request.headers.items() if k.startswith(constants.FORWARDED_HEADER_PREFIX)}
        return await self._call(app, deployed, method, body, len(raw), forwarded)

    async def _call(self, app: str, deployed: DeployedFunction, method: str | None, body: Any,
                    bytes_in: int, headers: dict[str, str] | None = None) -> Response:
        spec = deployed.spec
        key = (app, spec.name)
        if not self._admit(app, deployed):
            return self._queue_full(spec.name)
        try:
            handle = self._handle(app, deployed)
            attempts = spec.retries + 1
            for attempt in range(attempts):
                response = handle.remote(method, body, bytes_in, headers or {})
                try:
                    status, payload, version, extra_headers = await asyncio.wait_for(
                        _await(response), timeout=spec.timeout + constants.COLD_START_ALLOWANCE_S
                    )
                except BackPressureError:
                    return self._queue_full(spec.name)
                except asyncio.TimeoutError:
                    response.cancel()
                    return error_response(504, "Timeout", f"no replica of {spec.name!r} answered within "
                                          f"{spec.timeout + constants.COLD_START_ALLOWANCE_S:g} s "
                                          "(timeout plus cold-start allowance); `raygpu status` shows its replicas")
                except REPLICA_GONE_ERRORS as exc:
                    if attempt + 1 < attempts:
                        logger.warning("raygpu gateway: replica of %s/%s died; retrying", app, spec.name)
                        continue
                    return error_response(500, "ReplicaDied", f"the replica running {spec.name!r} exited during the "
                                          f"call ({type(exc).__name__}) after {attempts} attempt(s); set `retries=` "
                                          "to retry such calls, and see `raygpu logs`")
                return Response(content=payload, status_code=status, media_type="application/json",
                                headers={"x-raygpu-version": str(version), **extra_headers})
            raise AssertionError("unreachable")
        except Exception as exc:
            logger.exception("raygpu gateway: call of %s/%s failed", app, spec.name)
            return error_response(500, "InternalError", f"raygpu could not run the call: {type(exc).__name__}: {exc}")
        finally:
            self.inflight[key] -= 1

    async def _call_engine(self, app: str, deployed: DeployedFunction, request: Request, rest: list[str]) -> Response:
        """Forward `/{app}/{name}/v1/...` to a model engine's own HTTP API and stream its answer back."""
        spec = deployed.spec
        if not rest or rest[0] != "v1":
            return error_response(404, "NotFound", f"{spec.name!r} serves an OpenAI-compatible API: use "
                                  f"/{app}/{spec.name}/v1/... (e.g. POST /{app}/{spec.name}/v1/chat/completions)")
        if request.method not in ("GET", "POST"):
            return error_response(405, "MethodNotAllowed", "use GET or POST", headers={"Allow": "GET, POST"})
        raw = await self._read_body(request)
        if raw is None:
            return error_response(413, "PayloadTooLarge",
                                  f"request body exceeds the gateway limit of {self.max_body_bytes} bytes")
        key = (app, spec.name)
        if not self._admit(app, deployed):
            return self._queue_full(spec.name)
        released = streaming = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.inflight[key] -= 1

        try:
            handle = self._handle(app, deployed).options(stream=True)
            path = "/" + "/".join(rest)
            headers = {k: v for k, v in request.headers.items() if k in ("content-type", "accept")}
            for attempt in range(spec.retries + 1):
                stream = handle.http.remote(request.method, path, request.url.query.encode(), headers, raw, len(raw))
                try:
                    start = await asyncio.wait_for(stream.__anext__(), timeout=spec.timeout + constants.COLD_START_ALLOWANCE_S)
                except BackPressureError:
                    return self._queue_full(spec.name)
                except asyncio.TimeoutError:
                    stream.cancel()
                    return error_response(504, "Timeout", f"no replica of {spec.name!r} answered within "
                                          f"{spec.timeout + constants.COLD_START_ALLOWANCE_S:g} s")
                except REPLICA_GONE_ERRORS as exc:
                    if attempt < spec.retries:
                        continue
                    return error_response(500, "ReplicaDied", f"the replica running {spec.name!r} exited during the "
                                          f"call ({type(exc).__name__}); see `raygpu logs {app}/{spec.name}`")
                break

            async def body() -> Any:
                try:
                    async for chunk in stream:
                        yield chunk
                finally:
                    release()

            response_headers = {k: v for k, v in start["headers"]}
            response_headers["x-raygpu-version"] = str(self.table.apps[app]["version"])
            streaming = True  # the body iterator releases the slot when the stream ends
            return StreamingResponse(body(), status_code=start["status"], headers=response_headers)
        except Exception as exc:
            logger.exception("raygpu gateway: call of %s/%s failed", app, spec.name)
            return error_response(500, "InternalError", f"raygpu could not run the call: {type(exc).__name__}: {exc}")
        finally:
            if not streaming:
                release()

    @staticmethod
    def _queue_full(name: str) -> Response:
        return error_response(503, "QueueFull", f"{name!r} has as many queued calls as its max_queue allows; "
                              f"retry after {constants.RETRY_AFTER_S} s",
                              headers={"Retry-After": str(constants.RETRY_AFTER_S)})


async def _await(response: Any) -> Any:
    return await response


def build_gateway_application(http_host: str, http_port: int, max_body_bytes: int = constants.MAX_BODY_BYTES) -> Any:
    return Gateway.bind(http_host, http_port, max_body_bytes)
