"""What a kind of unit declares: its spec rules, its HTTP routes and their OpenAPI operations,
how the gateway matches a path to it, and the replica class that runs it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from deployments.spec import FunctionSpec, RouteSchema


class RouteNotFound(Exception):
    """A path under a unit that the unit does not serve (HTTP 404, the message says what it serves)."""


# FunctionSpec fields that hold one kind's own settings.
KIND_SETTINGS_FIELDS = ("torch_model", "vllm_model")


class UnitKind(ABC):
    """One kind of deployable unit. Subclasses set `name` and override what differs."""

    name: ClassVar[str]
    # The FunctionSpec field holding this kind's own settings, if any.
    settings_field: ClassVar[str | None] = None
    # Whether the unit exposes several methods (`POST /{app}/{unit}/{method}`).
    has_methods: ClassVar[bool] = False
    # HTTP methods the gateway accepts on this kind's routes.
    http_methods: ClassVar[tuple[str, ...]] = ("POST",)
    # True when the replica serves raw HTTP under the unit's path (the gateway streams it through)
    # instead of taking one JSON body of keyword arguments.
    forwards_http: ClassVar[bool] = False
    # The warm-pool flavour whose workers have this kind's imports done (deployments/node/warm_pool.py).
    warm_flavour: ClassVar[str] = "torch"
    # Whether units of this kind may run on a schedule (`schedule=raygpu.Cron(...)`).
    schedulable: ClassVar[bool] = False
    # Whether warm workers of the app may load this kind's code ahead (`enable_memory_snapshot`).
    runs_ahead: ClassVar[bool] = False

    def check_spec(self, spec: FunctionSpec) -> None:
        """Raise ValueError naming what `spec` lacks or has that this kind does not allow."""
        for field in KIND_SETTINGS_FIELDS:
            if getattr(spec, field) is not None and field != self.settings_field:
                raise ValueError(f"{field} settings belong to another kind of unit, not to a {self.name}")
        if self.settings_field and getattr(spec, self.settings_field) is None:
            raise ValueError(f"a {self.name} deployment needs {self.settings_field} settings")
        if spec.methods and not self.has_methods:
            raise ValueError(f"a {self.name} has no methods; only classes do")
        if spec.snap_hooks and not self.has_methods:
            raise ValueError(f"a {self.name} has no enter hooks; @raygpu.enter(snap=True) goes on a class's methods")
        if spec.enable_memory_snapshot and not self.runs_ahead:
            raise ValueError(
                f"enable_memory_snapshot goes on functions and classes, not on a {self.name}: its replicas "
                f"start on the {self.warm_flavour} warm workers, which have its engine imported already"
            )
        if spec.schedule is not None and not self.schedulable:
            raise ValueError(
                f"schedule= goes on functions (@app.function), not on a {self.name}: schedule a function that calls it"
            )

    @abstractmethod
    def routes(self, app: str, spec: FunctionSpec, code: Any) -> list[RouteSchema]:
        """The unit's HTTP routes with their input and output schemas (for `/docs`)."""

    def route_pattern(self, app: str, spec: FunctionSpec) -> str:
        """The unit's route as `raygpu status` shows it."""
        return f"/{app}/{spec.name}"

    def match(self, app: str, spec: FunctionSpec, rest: list[str]) -> str | None:
        """The method a path under the unit names (`rest`: the segments after the unit's name);
        raise RouteNotFound when the unit serves no such path."""
        if rest:
            raise RouteNotFound(f"{spec.name!r} ({self.name}) has no routes below it: call POST /{app}/{spec.name}")
        return None

    def openapi_operations(self, route: RouteSchema) -> dict[str, Any]:
        """The OpenAPI operations of one of this kind's routes, by HTTP method."""
        return {
            "post": {
                "operationId": route.path.strip("/").replace("/", "__"),
                "summary": (route.doc or "").strip().split("\n")[0] or None,
                "description": route.doc,
                "requestBody": {"required": True, "content": {"application/json": {"schema": route.input_schema}}},
                "responses": {
                    "200": {"description": "Result", "content": {"application/json": {"schema": route.output_schema}}},
                    "422": {"description": "Arguments do not match the signature"},
                    "500": {"description": "The function raised"},
                    "503": {"description": "Queue full; retry after Retry-After seconds"},
                    "504": {"description": "The call exceeded its timeout"},
                },
            }
        }

    @abstractmethod
    def replica_class(self) -> type:
        """The Serve deployment class whose replicas run this kind (imported when asked for, so
        declaring and routing units never imports replica code)."""
