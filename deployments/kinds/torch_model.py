"""A PyTorch model: `POST /{app}/{name}` with `{"inputs": [...]}`, batched across calls, the model
picked by the `x-raygpu-model` header."""

from __future__ import annotations

from typing import Any

from deployments import constants
from deployments.kinds.base import UnitKind
from deployments.spec import FunctionSpec, RouteSchema

INPUT_SCHEMA = {"type": "object", "required": ["inputs"], "properties": {"inputs": {"type": "array", "minItems": 1}}}
OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {"outputs": {"type": "array"}, "model": {"type": "string"}, "weights_version": {"type": "integer"}},
}


class TorchModelKind(UnitKind):
    name = "torch"
    settings_field = "torch_model"

    def routes(self, app: str, spec: FunctionSpec, code: Any) -> list[RouteSchema]:
        models = ", ".join(spec.torch_model.weights)
        return [
            RouteSchema(
                path=f"/{app}/{spec.name}",
                doc=f"PyTorch model; models: {models} (header {constants.MODEL_HEADER})",
                input_schema=INPUT_SCHEMA,
                output_schema=OUTPUT_SCHEMA,
            )
        ]

    def openapi_operations(self, route: RouteSchema) -> dict[str, Any]:
        operations = super().openapi_operations(route)
        responses = operations["post"]["responses"]
        responses["404"] = {"description": f"No such model (the {constants.MODEL_HEADER} header)"}
        responses["422"] = {"description": "The inputs are not a non-empty list the model can run"}
        responses["500"] = {"description": "The model failed"}
        return operations

    def replica_class(self) -> type:
        from deployments.replicas.torch_model import TorchModelReplica

        return TorchModelReplica
