"""Function specs: what a decorator declares about one function or class, validated at once.

`FunctionSpec` is the pydantic model that travels from the decorator to the control-plane store and
to the Serve deployment; `Image` describes the replica's Python environment.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments import constants
from deployments.calls.retries import NO_RETRIES, Retries, as_retries
from deployments.schedules import CronSchedule, PeriodSchedule, Schedule
from deployments.secrets import SecretError, check_secret_name


class Image(BaseModel):
    """A replica's environment: extra pip packages and environment variables (a Ray runtime_env)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pip: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)

    def to_runtime_env(self) -> dict[str, Any]:
        runtime_env: dict[str, Any] = {}
        if self.pip:
            runtime_env["pip"] = list(self.pip)
        if self.env:
            runtime_env["env_vars"] = dict(self.env)
        return runtime_env


class GpuRequest(BaseModel):
    """A parsed `gpu=` value: how many GPUs, and which types are acceptable (None: any)."""

    model_config = ConfigDict(frozen=True)

    count: int
    types: list[str] | None = None

    def describe(self) -> str:
        kind = " or ".join(self.types) if self.types else "GPU"
        return f"{self.count}x {kind}"


def _canonical_gpu_type(name: str) -> str:
    for known in constants.KNOWN_GPU_TYPES:
        if known.lower() == name.strip().lower():
            return known
    raise ValueError(f"unknown GPU type {name!r}; use one of {', '.join(constants.KNOWN_GPU_TYPES)}")


def parse_gpu(value: Any) -> GpuRequest | None:
    """Parse `None`, `1`, `"H100"`, `"A10G:2"` or `["H100", "A100"]` into a GpuRequest."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("must be None, a GPU count, a type such as 'H100' or 'A10G:2', or a list of types")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("a GPU count must be at least 1 (use gpu=None for a CPU function)")
        return GpuRequest(count=value)
    if isinstance(value, str):
        name, _, count_text = value.partition(":")
        count = 1
        if count_text:
            if not count_text.isdigit() or int(count_text) < 1:
                raise ValueError(f"{value!r}: the count after ':' must be a positive integer")
            count = int(count_text)
        return GpuRequest(count=count, types=[_canonical_gpu_type(name)])
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("a list of GPU types must not be empty")
        parsed = [parse_gpu(item) for item in value]
        if any(not isinstance(item, str) for item in value):
            raise ValueError("a list must hold GPU type strings such as 'H100' or 'A100:2'")
        counts = {item.count for item in parsed if item is not None}
        if len(counts) != 1:
            raise ValueError("every type in a GPU list must ask for the same count")
        types = [t for item in parsed if item is not None for t in (item.types or [])]
        return GpuRequest(count=counts.pop(), types=types)
    raise ValueError("must be None, a GPU count, a type such as 'H100' or 'A10G:2', or a list of types")


def validate_name(name: str, *, what: Literal["app", "function", "class", "method"]) -> str:
    """Names become URL path segments: letters, digits, '-' and '_', not reserved."""
    reserved = constants.RESERVED_APP_NAMES if what == "app" else constants.RESERVED_FUNCTION_NAMES
    if name.startswith("_"):
        raise ValueError(f"{what} name {name!r} must not start with '_' (reserved for raygpu)")
    if name in reserved:
        raise ValueError(
            f"{what} name {name!r} is reserved for a gateway route; reserved: {', '.join(sorted(reserved))}"
        )
    if not re.match(constants.NAME_PATTERN, name):
        raise ValueError(
            f"{what} name {name!r} must start with a letter and hold only letters, digits, '-' or '_' "
            "(at most 63 characters)"
        )
    return name


class TorchModelSpec(BaseModel):
    """A PyTorch model deployment: weights per model id (the first is the default), how many stay
    loaded per replica, and dynamic batching."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, str] = Field(min_length=1, description="model id -> weights file (safetensors or torch.save)")
    max_models: int = Field(default=constants.DEFAULT_MAX_MODELS, ge=1, le=1000)
    max_batch_size: int = Field(default=constants.DEFAULT_MAX_BATCH_SIZE, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(default=constants.DEFAULT_BATCH_WAIT_TIMEOUT_S, ge=0, le=10)

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, weights: dict[str, str]) -> dict[str, str]:
        for model_id, path in weights.items():
            if not re.match(constants.MODEL_ID_PATTERN, model_id):
                raise ValueError(f"model id {model_id!r} must hold only letters, digits, '.', '-' or '_'")
            if not path:
                raise ValueError(f"model {model_id!r} needs a weights file")
        return weights

    @property
    def default_model(self) -> str:
        return next(iter(self.weights))


@dataclass(frozen=True)
class TorchModelCode:
    """The code half of a torch model deployment, shipped to replicas: `factory()` builds the
    nn.Module (on the meta device; weights are assigned after), `preprocess(items, device)` turns a
    batch of request items into the module's input, `postprocess(output, items)` into one JSON
    value per item."""

    factory: Callable[[], Any]
    preprocess: Callable[..., Any] | None = None
    postprocess: Callable[..., list[Any]] | None = None


class VllmModelSpec(BaseModel):
    """A vLLM engine deployment behind an OpenAI-compatible API."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="a local model directory (or a hub id where the hub is reachable)")
    served_model_name: str | None = None
    task: Literal["generate", "embed"] = "generate"
    engine_args: dict[str, Any] = Field(default_factory=dict)
    sleep_mode: bool = False

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model


class FunctionSpec(BaseModel):
    """Everything `@app.function(...)` / `@app.cls(...)` declares about one deployable unit."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    # The kind of unit (deployments/kinds): which rules, routes and replica class apply.
    kind: str = Field(default="function", pattern=r"^[a-z][a-z_]*$")
    methods: list[str] = Field(default_factory=list)
    gpu: Any = None
    cpu: float = Field(default=constants.DEFAULT_CPU, gt=0, le=512)
    memory: int | None = Field(default=None, gt=0, description="MiB reserved per replica")
    image: Image = Field(default_factory=Image)
    min_containers: int = Field(default=0, ge=0)
    max_containers: int = Field(default=constants.DEFAULT_MAX_CONTAINERS, ge=1)
    buffer_containers: int = Field(default=0, ge=0)
    scaledown_window: float = Field(
        default=constants.DEFAULT_SCALEDOWN_WINDOW_S, gt=0, le=constants.MAX_SCALEDOWN_WINDOW_S
    )
    timeout: float = Field(default=constants.DEFAULT_TIMEOUT_S, gt=0, le=constants.MAX_TIMEOUT_S)
    # How long a call may wait for a replica to start (node launch included) on top of `timeout`.
    startup_timeout: float = Field(
        default=constants.DEFAULT_STARTUP_TIMEOUT_S, gt=0, le=constants.MAX_STARTUP_TIMEOUT_S
    )
    # Runs again of a call whose code raised (an int n: n more runs, 1 s apart).
    retries: Retries = Field(default=NO_RETRIES)
    max_inputs: int = Field(default=constants.DEFAULT_MAX_INPUTS, ge=1, le=10_000)
    max_queue: int = Field(default=constants.DEFAULT_MAX_QUEUE, ge=0, le=1_000_000)
    torch_model: TorchModelSpec | None = None
    vllm_model: VllmModelSpec | None = None
    # The positional parameters of each callable (a function under its own name, a class's methods
    # under theirs): `fn.remote(1, 2)` and `fn.map(...)` bind arguments as a local call would.
    parameters: dict[str, list[str]] = Field(default_factory=dict)
    # The callables whose body yields: their calls stream items (ndjson or SSE, `remote_gen`).
    generators: list[str] = Field(default_factory=list)
    # Names of the secrets whose variables the unit's code sees (`secrets=[raygpu.Secret.from_name(...)]`):
    # names only; the values stay encrypted in the store until a replica starts.
    secrets: list[str] = Field(default_factory=list, max_length=32)
    # When the cluster runs the function on its own (`schedule=raygpu.Cron(...)` or `raygpu.Period(...)`).
    schedule: Schedule | None = None
    # A class's `@raygpu.enter(snap=True)` hooks: warm workers of the app run them ahead of its replicas.
    snap_hooks: list[str] = Field(default_factory=list, max_length=64)
    # Load the unit's code ahead, in warm workers of the app (Modal's name for it): its imports run
    # before any call. A class with `snap=True` hooks asks for it too.
    enable_memory_snapshot: bool = False

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str, info: Any) -> str:
        return validate_name(name, what="function")

    @field_validator("secrets", mode="before")
    @classmethod
    def _check_secrets(cls, value: Any) -> Any:
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise ValueError("secrets= takes a list: secrets=[raygpu.Secret.from_name('hf')]")
        names = [getattr(item, "secret_name", item) for item in value]
        try:
            return list(dict.fromkeys(check_secret_name(name) for name in names))
        except SecretError as exc:
            raise ValueError(f"{exc}; name secrets with raygpu.Secret.from_name('NAME')") from None

    @field_validator("schedule", mode="before")
    @classmethod
    def _check_schedule(cls, value: Any) -> Any:
        if isinstance(value, (CronSchedule, PeriodSchedule)):
            return value.model_dump()
        if value is not None and not isinstance(value, dict):
            raise ValueError(
                "schedule= takes raygpu.Cron('0 3 * * *', timezone='Europe/Berlin') or raygpu.Period(hours=1)"
            )
        return value

    @field_validator("retries", mode="before")
    @classmethod
    def _check_retries(cls, value: Any) -> Any:
        return as_retries(value)

    @field_validator("gpu", mode="before")
    @classmethod
    def _check_gpu(cls, value: Any) -> Any:
        parse_gpu(value)
        if isinstance(value, tuple):
            return list(value)
        return value

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, methods: list[str]) -> list[str]:
        for method in methods:
            validate_name(method, what="method")
        return methods

    @model_validator(mode="after")
    def _check_bounds(self) -> "FunctionSpec":
        if self.min_containers > self.max_containers:
            raise ValueError(
                f"min_containers ({self.min_containers}) must not exceed max_containers ({self.max_containers})"
            )
        callables = set(self.methods) if self.methods else {self.name}
        unknown = sorted((set(self.generators) | set(self.parameters)) - callables)
        if unknown:
            raise ValueError(f"generators/parameters name {', '.join(unknown)}, which {self.name} does not define")
        return self

    def callable_key(self, method: str | None) -> str:
        """How `parameters` and `generators` name a callable: a method, else the function itself."""
        return method if method is not None else self.name

    def streams(self, method: str | None) -> bool:
        """Whether calls of this callable stream the items its body yields."""
        return self.callable_key(method) in self.generators

    @property
    def queue_bound(self) -> int:
        """The calls a function admits at once, running or waiting, before callers get 503 QueueFull:
        `max_containers x max_inputs + max_queue` (spawned calls open count against it the same way)."""
        return self.max_containers * self.max_inputs + self.max_queue

    @property
    def gpu_request(self) -> GpuRequest | None:
        return parse_gpu(self.gpu)

    @property
    def gpu_label(self) -> str | None:
        request = self.gpu_request
        return request.describe() if request else None


class RouteSchema(BaseModel):
    """One HTTP route of a deployed function: `POST /{app}/{function}[/{method}]`."""

    method: str | None = None
    path: str
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] = Field(default_factory=dict)
    doc: str | None = None


def live_unit(entry: dict[str, Any] | None, name: str) -> "DeployedFunction | None":
    """The unit `name` of a live app as the store lists it (`live_app`), None when it has none."""
    for raw in entry["functions"] if entry else []:
        if raw.get("spec", {}).get("name") == name:
            return DeployedFunction.model_validate(raw)
    return None


def version_app_name(app: str, version: int) -> str:
    """The Serve application running one version of an app: versions run side by side while a new
    one starts and is checked, and the gateway routes to the live one."""
    return f"{constants.USER_APP_PREFIX}{app}--v{version}"


def version_app_prefix(app: str) -> str:
    """What the Serve applications of every version of `app` (and only of it) start with."""
    return f"{constants.USER_APP_PREFIX}{app}--v"


class DeployedFunction(BaseModel):
    """What the registry keeps of one function of a deployed app version."""

    spec: FunctionSpec
    # The version's Serve application; left empty by a deploy, filled in when the version is recorded.
    serve_app: str = ""
    deployment: str
    accelerator: str | None = None
    routes: list[RouteSchema] = Field(default_factory=list)
    # sha256 of the spec and the pickled code: `raygpu deploy --check` starts the functions whose digest moved.
    digest: str = ""
