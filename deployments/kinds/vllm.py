"""A vLLM engine behind vLLM's own OpenAI-compatible API at `/{app}/{name}/v1/...`: the gateway
streams the engine's HTTP answers through."""

from __future__ import annotations

from typing import Any

from deployments.kinds.base import RouteNotFound, UnitKind
from deployments.spec import FunctionSpec, RouteSchema

GENERATE_ENDPOINTS = ("completions", "chat/completions", "models")
EMBED_ENDPOINTS = ("embeddings", "models")


class VllmKind(UnitKind):
    name = "vllm"
    settings_field = "vllm_model"
    http_methods = ("GET", "POST")
    forwards_http = True
    warm_flavour = "vllm"

    def routes(self, app: str, spec: FunctionSpec, code: Any) -> list[RouteSchema]:
        endpoints = EMBED_ENDPOINTS if spec.vllm_model.task == "embed" else GENERATE_ENDPOINTS
        return [
            RouteSchema(path=f"/{app}/{spec.name}/v1/{endpoint}", doc=f"OpenAI-compatible {endpoint} (vLLM)")
            for endpoint in endpoints
        ]

    def route_pattern(self, app: str, spec: FunctionSpec) -> str:
        return f"/{app}/{spec.name}/v1/..."

    def match(self, app: str, spec: FunctionSpec, rest: list[str]) -> str | None:
        if not rest or rest[0] != "v1":
            raise RouteNotFound(
                f"{spec.name!r} serves an OpenAI-compatible API: use /{app}/{spec.name}/v1/... "
                f"(e.g. POST /{app}/{spec.name}/v1/chat/completions)"
            )
        return "/" + "/".join(rest)

    def openapi_operations(self, route: RouteSchema) -> dict[str, Any]:
        operation_id = route.path.strip("/").replace("/", "__")
        answer = {
            "200": {"description": "vLLM's answer (server-sent events when the request asks to stream)"},
            "400": {"description": "vLLM refused the request"},
        }
        if route.path.endswith("/models"):
            return {"get": {"operationId": operation_id, "summary": route.doc, "responses": answer}}
        return {
            "post": {
                "operationId": operation_id,
                "summary": route.doc,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": answer,
            }
        }

    def replica_class(self) -> type:
        from deployments.replicas.vllm import VllmReplica

        return VllmReplica
