"""A plain function: `POST /{app}/{function}` with a JSON object of its keyword arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from deployments.kinds.base import UnitKind
from deployments.signature import arguments_model, return_schema
from deployments.spec import FunctionSpec, RouteSchema


def route_of_callable(
    path: str, fn: Callable[..., Any], method: str | None = None, *, skip_first: bool = False
) -> RouteSchema:
    """A route whose body is the keyword arguments of `fn` and whose answer is its return value."""
    return RouteSchema(
        method=method,
        path=path,
        doc=inspect.getdoc(fn),
        input_schema=arguments_model(fn, skip_first=skip_first).model_json_schema(),
        output_schema=return_schema(fn),
    )


class FunctionKind(UnitKind):
    name = "function"
    schedulable = True
    runs_ahead = True

    def check_spec(self, spec: FunctionSpec) -> None:
        super().check_spec(spec)
        if spec.schedule is not None and spec.generators:
            raise ValueError("a scheduled function records one result per run: it must return, not yield")

    def routes(self, app: str, spec: FunctionSpec, code: Any) -> list[RouteSchema]:
        return [route_of_callable(f"/{app}/{spec.name}", code)]

    def replica_class(self) -> type:
        from deployments.replicas.function import FunctionReplica

        return FunctionReplica
