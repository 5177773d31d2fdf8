"""The JSON contracts of the CLI: `raygpu ls --json` and `raygpu status APP --json` print these.

Scripts rely on these shapes; extra keys may be added, existing ones never renamed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# `raygpu cost --json` is `billing.cost.CostComparison` (money and ratios as strings).
from billing.cost import CostComparison, CostOption, PriceRange
from deployments.spec import FunctionSpec, RouteSchema

__all__ = ["CostComparison", "CostOption", "PriceRange"]


class ReplicaCounts(BaseModel):
    running: int = 0
    starting: int = 0
    stopping: int = 0


class ScaleEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    time: float
    from_replicas: int = Field(alias="from")
    to_replicas: int = Field(alias="to")


class ReplicaInfo(BaseModel):
    replica_id: str
    state: str
    pid: int | None = None
    node_id: str | None = None
    start_time: float | None = None


class ScheduledRunInfo(BaseModel):
    """One run of a scheduled function (`raygpu runs APP/FN --json`): the due time it ran for (None
    for `raygpu run`), the spawned call it made (its record at /{app}/calls/{call_id}) or why it was
    skipped, and the call's outcome."""

    run_id: int
    app: str
    function: str
    version: int
    trigger: str = Field(description="'schedule' or 'manual' (`raygpu run`)")
    due_at: float | None = None
    created_at: float
    call_id: str | None = None
    status: str = Field(description="pending, running, succeeded, failed, cancelled, skipped, or expired")
    reason: str | None = Field(default=None, description="why a skipped run was skipped")
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)


class ScheduleStatus(BaseModel):
    """A scheduled function's schedule, next due time and last run (`raygpu status`)."""

    schedule: str
    next_run: float | None = None
    last_run: ScheduledRunInfo | None = None


class FunctionStatus(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    name: str
    kind: str
    route: str
    gpu: str | None
    accelerator: str | None = None
    replicas: ReplicaCounts
    target: int
    last_scale_event: ScaleEvent | None = None
    status: str = "UNKNOWN"
    message: str = ""
    replica_details: list[ReplicaInfo] = Field(default_factory=list)
    last_start_phases: dict[str, float] = Field(
        default_factory=dict,
        description="the latest replica start, seconds per phase (detection, provision, scheduling, process, "
        "imports, engine_process, weights, kv_cache, warmup, engine_init, ready, first_token, first_response)",
    )
    waiting_for_node: str | None = Field(
        default=None, description="the node type a starting replica waits for the autoscaler to launch, if any"
    )
    cancels: dict[str, float | int] = Field(
        default_factory=dict,
        description="cancelled sync calls: replicas replaced (in the last hour, and the hourly limit), calls "
        "let finish on their replicas, and the grace (deployments/calls/cancels.py); empty when none",
    )
    schedule: ScheduleStatus | None = None
    warm_workers: str | None = Field(
        default=None,
        description="for a unit whose code loads ahead (a class with snap=True enter hooks, "
        "enable_memory_snapshot=True): the nodes whose warm workers hold it, or why none does (its "
        "replicas then start as without one)",
    )


class AppStatus(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    app: str
    version: int
    deployed_at: float | None = None
    source: str | None = None
    gateway_url: str | None = None
    functions: list[FunctionStatus]


class AppSummary(BaseModel):
    name: str
    version: int
    deployed_at: float | None = None
    functions: list[str]
    source: str | None = None


class AppList(BaseModel):
    apps: list[AppSummary]


class DeployResult(BaseModel):
    app: str
    version: int
    functions: list[str]
    routes: list[str]
    gateway_url: str | None = None
    # functions whose new replicas were started and found healthy before the version went live
    checked: list[str] = []


class TokenCreated(BaseModel):
    app: str
    id: str
    token: str


class WebhookSecret(BaseModel):
    """The secret an app's webhooks are signed with: `x-raygpu-signature: sha256=HMAC(secret, body)`."""

    app: str
    secret: str


class AuthState(BaseModel):
    """Whether every route of an app needs a bearer token."""

    app: str
    protected: bool
    revoked_tokens: int = 0


class SecretInfo(BaseModel):
    """What `raygpu secret ls` shows of a secret: never its values."""

    name: str
    keys: list[str]
    created_at: float
    updated_at: float
    apps: list[str] = Field(default_factory=list, description="apps whose live version names it")


class TokenInfo(BaseModel):
    id: str
    app: str
    created_at: float
    revoked_at: float | None = None


class BillLineOut(BaseModel):
    """One line of `raygpu bill --json`: GPU-seconds and cost by phase (money as strings)."""

    app: str
    function: str
    day: str | None = None
    gpu_seconds: dict[str, str]
    cost_usd: dict[str, str]
    total_gpu_seconds: str
    total_cost_usd: str
    replica_starts: int


class Bill(BaseModel):
    app: str | None = None
    since: float | None = None
    until: float | None = None
    by: str = "function"
    lines: list[BillLineOut]
    total_gpu_seconds: str
    total_cost_usd: str


class CallStage(BaseModel):
    """One run of one function under a call id: a stage of a pipeline, or a retry of one."""

    app: str
    function: str
    replica: str
    attempt: int
    started_at: float
    duration_s: float
    status: int


class CallStages(BaseModel):
    call_id: str
    stages: list[CallStage]


class PreparedUnit(BaseModel):
    """One unit of a deploy as the CLI ships it to the cluster: its spec (weights as stored
    locations), its pickled code (base64 in JSON) and its HTTP routes."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    spec: FunctionSpec
    payload: bytes
    routes: list[RouteSchema] = Field(default_factory=list)
