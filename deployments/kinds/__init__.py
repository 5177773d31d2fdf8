"""The registry of unit kinds: function, class, torch model, vLLM. Adding a kind is one module
beside these and one entry in `KINDS`: its rules, routes, OpenAPI, gateway matching and replica class
live there. Elsewhere code reads a unit's settings (a deploy uploads the weight files a torch model
names), never which kind it is."""

from __future__ import annotations

from deployments.kinds.base import RouteNotFound, UnitKind
from deployments.kinds.cls import ClassKind
from deployments.kinds.function import FunctionKind
from deployments.kinds.torch_model import TorchModelKind
from deployments.kinds.vllm import VllmKind
from deployments.spec import FunctionSpec

KINDS: dict[str, UnitKind] = {kind.name: kind for kind in (FunctionKind(), ClassKind(), TorchModelKind(), VllmKind())}


def kind_of(spec: FunctionSpec) -> UnitKind:
    """The kind of a unit; ValueError for a kind this version of raygpu does not know."""
    try:
        return KINDS[spec.kind]
    except KeyError:
        raise ValueError(f"unknown kind of unit {spec.kind!r}; known: {', '.join(KINDS)}") from None


def checked(spec: FunctionSpec) -> FunctionSpec:
    """`spec`, once its kind's rules hold (ValueError naming the problem otherwise)."""
    kind_of(spec).check_spec(spec)
    return spec


__all__ = ["KINDS", "RouteNotFound", "UnitKind", "checked", "kind_of"]
