"""The control plane's start-up options, one model for every way it starts: `raygpu up` builds it
(locally or on a cluster), the control-plane driver receives it as JSON, install_control_plane runs
with it. Values are checked where the model is built, naming the option."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments import constants
from deployments.calls.callbacks import parse_networks
from deployments.calls.cancels import DEFAULT_CANCEL_GRACE_S, DEFAULT_CANCEL_REPLACEMENTS_PER_HOUR
from deployments.calls.records import DEFAULT_CALL_RETENTION_S, DEFAULT_CALL_STORAGE_PER_APP
from deployments.node.warm_pool import parse_pool_sizes
from raygpu.ops.capacity import NodeType


class ControlPlaneOptions(BaseModel):
    """How the control plane runs: where it keeps its state, its ports, what it starts."""

    model_config = ConfigDict(extra="forbid")

    state_dir: str = Field(min_length=1, description="store, ledger and weight blobs (`--state-dir`)")
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=constants.DEFAULT_HTTP_PORT, ge=1, le=65535)
    serve_port: int | None = Field(default=None, ge=1, le=65535, description="Serve's own proxy; http_port + 1")
    # the Prometheus exporter; None: the default port on a cluster, a free one on a local cluster
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    prices_path: str | None = None
    warm_pool: dict[str, int] = Field(default_factory=lambda: parse_pool_sizes(constants.DEFAULT_WARM_POOL_SIZE))
    replicas_off_head: bool = False
    node_types: list[NodeType] = Field(default_factory=list)
    autoscaling_config: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    public_url: str | None = None
    call_retention_s: float = Field(default=DEFAULT_CALL_RETENTION_S, gt=0)
    callback_allow: list[str] = Field(default_factory=list)
    call_storage_per_app: int = Field(default=DEFAULT_CALL_STORAGE_PER_APP, ge=2**20)
    cancel_grace_s: float = Field(default=DEFAULT_CANCEL_GRACE_S, ge=0)
    cancel_replacements_per_hour: int = Field(default=DEFAULT_CANCEL_REPLACEMENTS_PER_HOUR, ge=0, le=1000)
    park_after_s: float = Field(default=constants.DEFAULT_PARK_AFTER_S, ge=0)
    # memory a node's warm workers that hold apps may take (None: a quarter of the node's memory)
    warm_memory: int | None = Field(default=None, ge=0)
    # how long a gateway connection may take to send a request's headers, and its body
    header_timeout_s: float = Field(default=constants.HEADER_TIMEOUT_S, ge=1, le=600)
    body_timeout_s: float = Field(default=constants.BODY_TIMEOUT_S, ge=1, le=3600)

    @field_validator("warm_pool", mode="before")
    @classmethod
    def _pool_sizes(cls, value: Any) -> dict[str, int]:
        return parse_pool_sizes(value)

    @field_validator("callback_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ControlPlaneOptions:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("give both --tls-cert and --tls-key (PEM files), or neither")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ValueError(f"--public-url {self.public_url!r} must start with http:// or https://")
        return self
