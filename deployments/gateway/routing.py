"""The gateway's routing table: which app and unit a request path names, whether its bearer token
is accepted, and the app's OpenAPI document. Pure: built from the store's routing-table snapshot."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from deployments import constants
from deployments.kinds import RouteNotFound, UnitKind, kind_of
from deployments.spec import DeployedFunction


@dataclass
class RouteError(Exception):
    """A request the gateway answers itself: 4xx with a type and a message saying what to do."""

    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.error_type}: {self.message}"


@dataclass(frozen=True)
class Route:
    """A request matched to a unit: `target` is the method of a class, the engine path of a unit
    that serves raw HTTP, or None."""

    app: str
    deployed: DeployedFunction
    kind: UnitKind
    target: str | None


def _hoist_defs(node: Any, components: dict[str, Any]) -> Any:
    """`node` (an OpenAPI fragment) with every JSON Schema `$defs` inside it moved into
    `components` (renamed when another schema already took the name) and each `#/$defs/X`
    reference pointed at `#/components/schemas/...`, so every `$ref` resolves in the document."""
    if isinstance(node, list):
        return [_hoist_defs(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    defs = node.pop("$defs", None) or {}
    # Same-named definitions that are the same schema share one component; a different schema
    # under a taken name gets a numbered one.
    same = {name: f"#/components/schemas/{name}" for name in defs}
    renamed: dict[str, str] = {}
    for name, definition in defs.items():
        canonical = _rewrite_refs(definition, {n: n for n in same})
        target, n = name, 1
        while target in components and components[target] != canonical:
            n += 1
            target = f"{name}{n}"
        renamed[name] = target
    if renamed:
        node = _rewrite_refs(node, renamed)
        for name, target in renamed.items():
            components[target] = _hoist_defs(_rewrite_refs(defs[name], renamed), components)
    return {key: _hoist_defs(value, components) for key, value in node.items()}


def _rewrite_refs(node: Any, renamed: dict[str, str]) -> Any:
    if isinstance(node, list):
        return [_rewrite_refs(item, renamed) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            name = value.removeprefix("#/$defs/")
            out[key] = f"#/components/schemas/{renamed.get(name, name)}"
        elif key == "$defs":
            out[key] = value  # a nested scope: hoisted with its own names
        else:
            out[key] = _rewrite_refs(value, renamed)
    return out


def path_parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


class RoutingTable:
    """The gateway's view of live apps, rebuilt whenever the store's generation moves. `previous`:
    the table it replaces, whose parsed functions of apps still at the same version are reused
    (the generation also moves when a token, a protection or a parked set changes: with hundreds of
    apps, validating every function again each time would cost the gateway more than the change)."""

    def __init__(self, raw: dict[str, Any], previous: "RoutingTable | None" = None):
        self.generation: int = raw["generation"]
        self.apps: dict[str, dict[str, Any]] = {}
        self.functions: dict[tuple[str, str], DeployedFunction] = {}
        self._by_app: dict[str, dict[str, DeployedFunction]] = {}
        for name, app in raw["apps"].items():
            self.apps[name] = app
            known = previous.apps.get(name) if previous is not None else None
            if previous is not None and known is not None and known.get("version") == app.get("version"):
                parsed = previous._by_app[name]
            else:
                parsed = {}
                for entry in app["functions"]:
                    deployed = DeployedFunction.model_validate(entry)
                    parsed[deployed.spec.name] = deployed
            self._by_app[name] = parsed
            self.functions.update({(name, fn): deployed for fn, deployed in parsed.items()})
        self.token_hashes: dict[str, set[str]] = {app: set(h) for app, h in raw["token_hashes"].items()}
        # Protection is the app's own state, not "has an active token": revoking the last token
        # leaves nobody able to call the app, never everybody.
        self.protected: set[str] = set(raw["protected"]) | set(self.token_hashes)
        # Functions out of Serve until a call brings them back (deployments/parking.py).
        self.parked: set[tuple[str, str]] = {
            (app, name) for app, names in raw.get("parked", {}).items() for name in names
        }

    def app_of(self, parts: list[str]) -> str:
        """The deployed app a path starts with (RouteError 404 for no path, the 401 of `unauthorized` for
        an app that is not deployed)."""
        if not parts:
            raise RouteError(
                404, "NotFound", "no route here; call POST /{app}/{function} (`raygpu ls` lists the deployed apps)"
            )
        if parts[0] not in self.apps:
            # the same answer as a protected app gives a caller without a valid token: nobody learns
            # from the gateway which protected apps exist
            raise self.unauthorized(parts[0][:63])
        return parts[0]

    def authorized(self, app: str, authorization: str) -> bool:
        """Whether an `Authorization` header value lets a caller in (any caller, for a public app;
        nobody, for a protected app with no active token)."""
        if app not in self.protected:
            return True
        hashes = self.token_hashes.get(app, set())
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return hashlib.sha256(token.strip().encode()).hexdigest() in hashes

    def unauthorized(self, app: str) -> RouteError:
        """The 401 a caller without a valid token gets, and a caller of an app that is not deployed:
        the same status, body and headers, so the answer does not tell whether a protected app exists
        (nor whether it has tokens)."""
        return RouteError(
            401,
            "Unauthorized",
            f"app {app!r} is not deployed, or it needs a valid 'Authorization: Bearer <token>' header "
            f"(`raygpu ls` lists the deployed apps; `raygpu token create {app}` makes a token)",
            {"WWW-Authenticate": "Bearer"},
        )

    def route(self, app: str, parts: list[str], http_method: str) -> Route:
        """The unit and method a path of a deployed `app` names (`parts` includes the app)."""
        if len(parts) < 2:
            raise RouteError(
                404,
                "NotFound",
                f"no route {'/' + '/'.join(parts)!r}; routes are "
                f"POST /{app}/{{function}} and POST /{app}/{{Class}}/{{method}}",
            )
        deployed = self.functions.get((app, parts[1]))
        if deployed is None:
            known = ", ".join(sorted(f for a, f in self.functions if a == app))
            raise RouteError(404, "NotFound", f"app {app!r} has no function or class {parts[1]!r}; it has: {known}")
        kind = kind_of(deployed.spec)
        try:
            target = kind.match(app, deployed.spec, parts[2:])
        except RouteNotFound as exc:
            raise RouteError(404, "NotFound", str(exc)) from None
        if http_method not in kind.http_methods:
            allowed = ", ".join(kind.http_methods)
            raise RouteError(405, "MethodNotAllowed", f"call /{'/'.join(parts)} with {allowed}", {"Allow": allowed})
        return Route(app, deployed, kind, target)

    def spawn_route(self, app: str, parts: list[str], http_method: str) -> Route | None:
        """The unit a `/{app}/{fn}[/{method}]/spawn` path spawns a call of; None when the path is
        not a spawn (an engine's own HTTP API keeps every path it has)."""
        if len(parts) < 3 or parts[-1] != constants.SPAWN_ROUTE or (app, parts[1]) not in self.functions:
            return None
        deployed = self.functions[(app, parts[1])]
        if kind_of(deployed.spec).forwards_http:
            return None
        if http_method != "POST":
            raise RouteError(405, "MethodNotAllowed", f"spawn with POST /{'/'.join(parts)}", {"Allow": "POST"})
        route = self.route(app, parts[:-1], "POST")
        if deployed.spec.streams(route.target):
            raise RouteError(
                400,
                "GeneratorFunction",
                f"{deployed.spec.callable_key(route.target)} yields its results: POST /{'/'.join(parts[:-1])} "
                "streams them; spawn is for functions that return",
            )
        return route

    def openapi(self, app: str) -> dict[str, Any]:
        """An OpenAPI 3.1 document of one app, built from its units' routes."""
        paths: dict[str, Any] = {}
        schemas: dict[str, Any] = {}
        for (app_name, _), deployed in sorted(self.functions.items()):
            if app_name != app:
                continue
            kind = kind_of(deployed.spec)
            for route in deployed.routes:
                paths[route.path] = _hoist_defs(kind.openapi_operations(route), schemas)
        doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": f"raygpu app {app}", "version": str(self.apps[app]["version"])},
            "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
        }
        if app in self.protected:
            doc["security"] = [{"bearerAuth": []}]
        return doc
