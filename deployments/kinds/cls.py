"""A class with enter/exit hooks: each `@raygpu.method()` at `POST /{app}/{Class}/{method}`,
served by one instance per replica."""

from __future__ import annotations

import inspect
from typing import Any

from deployments.kinds.base import RouteNotFound, UnitKind
from deployments.kinds.function import route_of_callable
from deployments.spec import FunctionSpec, RouteSchema


class ClassKind(UnitKind):
    name = "class"
    has_methods = True
    runs_ahead = True

    def check_spec(self, spec: FunctionSpec) -> None:
        super().check_spec(spec)
        if not spec.methods:
            raise ValueError("a class needs at least one method marked with @raygpu.method()")

    def routes(self, app: str, spec: FunctionSpec, code: Any) -> list[RouteSchema]:
        return [
            route_of_callable(
                f"/{app}/{spec.name}/{method}", inspect.unwrap(getattr(code, method)), method, skip_first=True
            )
            for method in spec.methods
        ]

    def route_pattern(self, app: str, spec: FunctionSpec) -> str:
        return f"/{app}/{spec.name}/{{method}}"

    def match(self, app: str, spec: FunctionSpec, rest: list[str]) -> str | None:
        if len(rest) != 1 or rest[0] not in spec.methods:
            wanted = rest[0] if len(rest) == 1 else "(none)"
            raise RouteNotFound(
                f"class {spec.name!r} has no method {wanted!r}; methods: {', '.join(spec.methods)} "
                f"(POST /{app}/{spec.name}/{{method}})"
            )
        return rest[0]

    def replica_class(self) -> type:
        from deployments.replicas.function import ClassReplica

        return ClassReplica
