"""The one table of control-plane operations: each operation's name, the pydantic model of its
arguments, what runs it and what it answers. The head's admin API dispatches from it, and both ways
the CLI reaches a cluster (as a Ray driver, over the gateway: raygpu.ops.operations) are made from
it, so an operation is added here and nowhere else.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from billing.cost import CostComparison
from billing.node_bill import NodeBill
from deployments.calls.context import CALL_ID_SYNTAX
from deployments.weights_location import BLOB_NAME
from raygpu.ops.contracts import (
    AppList,
    AppStatus,
    AuthState,
    Bill,
    CallStages,
    DeployResult,
    PreparedUnit,
    ScheduledRunInfo,
    SecretInfo,
    TokenCreated,
    TokenInfo,
    WebhookSecret,
)

APP_NAME = Field(min_length=1, max_length=63)


class Args(BaseModel):
    """Arguments of an operation: exactly these fields, validated where they enter."""

    model_config = ConfigDict(extra="forbid")


class NoArgs(Args):
    pass


class AppArg(Args):
    app: str = APP_NAME


class DeployArgs(Args):
    app: str = APP_NAME
    source: str = Field(min_length=1, max_length=4096)
    units: list[PreparedUnit] = Field(min_length=1, max_length=256)
    check: bool = False


class LogsArgs(Args):
    target: str = Field(min_length=1, max_length=200)
    lines: int = Field(default=100, ge=1, le=100_000)


class RevokeArgs(Args):
    app: str = APP_NAME
    token_id: str = Field(min_length=1, max_length=64)


class AuthArgs(Args):
    app: str = APP_NAME
    protected: bool


class TokenListArgs(Args):
    app: str | None = Field(default=None, max_length=63)


class WeightsPushArgs(Args):
    app: str = APP_NAME
    function: str = Field(min_length=1, max_length=63)
    location: str = Field(min_length=1, max_length=4096)
    model: str | None = Field(default=None, max_length=128)


class WeightsListArgs(Args):
    app: str = APP_NAME
    function: str = Field(min_length=1, max_length=63)


class BillArgs(Args):
    app: str | None = Field(default=None, max_length=63)
    since: float | None = None
    until: float | None = None
    by: str = Field(default="function", pattern="^(function|day)$")


class NodeBillArgs(Args):
    since: float | None = None
    until: float | None = None


class CostArgs(Args):
    target: str | None = Field(default=None, max_length=200)
    since: float | None = None
    until: float | None = None
    dedicated: str | None = Field(default=None, max_length=64)
    per_request: str | None = Field(default=None, max_length=64)


class SecretCreateArgs(Args):
    name: str = Field(min_length=1, max_length=63)
    values: dict[str, str] = Field(min_length=1, max_length=100)
    replace: bool = False


class SecretRemoveArgs(Args):
    name: str = Field(min_length=1, max_length=63)
    force: bool = False


class ScheduledFunctionArgs(Args):
    app: str = APP_NAME
    function: str = Field(min_length=1, max_length=63)


class ScheduleRunsArgs(ScheduledFunctionArgs):
    limit: int = Field(default=20, ge=1, le=1000)


class CallIdArgs(Args):
    call_id: str = Field(pattern=CALL_ID_SYNTAX.pattern)


class BlobArgs(Args):
    name: str = Field(pattern=BLOB_NAME.pattern)


class BlobChunk(Args):
    name: str = Field(pattern=BLOB_NAME.pattern)
    offset: int = Field(ge=0)
    data: str = Field(max_length=64 * 2**20, description="base64")


@dataclass(frozen=True)
class Context:
    """Where an operation runs: `remote` when it reads the cluster from afar (logs through Ray's
    state API rather than this machine's files)."""

    remote: bool


@dataclass(frozen=True)
class Operation:
    args: type[Args]
    answer: Any  # the type its result parses as on the client side
    run: Callable[[Any, Context], Any]


def _deploy(a: DeployArgs, _: Context) -> DeployResult:
    from raygpu.ops.rollout import roll_out

    return roll_out(a.app, a.source, a.units, check=a.check)


def _deploy_op(name: str) -> Callable[[Any, Context], Any]:
    """A library function of raygpu.ops.deploy called with the fields of the arguments."""

    def run(a: Args, _: Context) -> Any:
        from raygpu.ops import deploy

        return getattr(deploy, name)(*a.model_dump().values())

    return run


def _tokens_op(name: str) -> Callable[[Any, Context], Any]:
    def run(a: Args, _: Context) -> Any:
        from raygpu.ops import tokens

        return getattr(tokens, name)(*a.model_dump().values())

    return run


def _usage_op(name: str) -> Callable[[Any, Context], Any]:
    def run(a: Args, _: Context) -> Any:
        from raygpu.ops import usage

        return getattr(usage, name)(*a.model_dump().values())

    return run


def _secrets_op(name: str) -> Callable[[Any, Context], Any]:
    def run(a: Args, _: Context) -> Any:
        from raygpu.ops import secrets

        return getattr(secrets, name)(*a.model_dump().values())

    return run


def _schedules_op(name: str) -> Callable[[Any, Context], Any]:
    def run(a: Args, _: Context) -> Any:
        from raygpu.ops import schedules

        return getattr(schedules, name)(*a.model_dump().values())

    return run


def _logs(a: LogsArgs, context: Context) -> list[list[str]]:
    from raygpu.ops.logs import replica_logs

    return [list(item) for item in replica_logs(a.target, a.lines, remote=context.remote)]


def _blob_has(a: BlobArgs, _: Context) -> bool:
    import ray

    from deployments.node.blobs import blobs

    return bool(ray.get(blobs().has.remote(a.name)))


def _blob_put(a: BlobChunk, _: Context) -> int:
    import ray

    from deployments.node.blobs import blobs
    from raygpu.sdk.admin import admin_key

    return ray.get(blobs().put.remote(admin_key(), a.name, a.offset, base64.b64decode(a.data, validate=True)))


def _blob_commit(a: BlobArgs, _: Context) -> Any:
    import ray

    from deployments.node.blobs import blobs
    from raygpu.sdk.admin import admin_key

    return ray.get(blobs().commit.remote(admin_key(), a.name))


OPERATIONS: dict[str, Operation] = {
    "ls": Operation(NoArgs, AppList, _deploy_op("list_apps")),
    "status": Operation(AppArg, AppStatus, _deploy_op("app_status")),
    "deploy": Operation(DeployArgs, DeployResult, _deploy),
    "stop": Operation(AppArg, None, _deploy_op("stop_app")),
    "logs": Operation(LogsArgs, list[tuple[str, str]], _logs),
    "token_create": Operation(AppArg, TokenCreated, _tokens_op("create_token")),
    "token_revoke": Operation(RevokeArgs, None, _tokens_op("revoke_token")),
    "token_ls": Operation(TokenListArgs, list[TokenInfo], _tokens_op("list_tokens")),
    "webhook_secret": Operation(AppArg, WebhookSecret, _tokens_op("webhook_secret")),
    "auth_set": Operation(AuthArgs, AuthState, _tokens_op("set_auth")),
    "auth_show": Operation(AppArg, AuthState, _tokens_op("auth_state")),
    "weights_push": Operation(WeightsPushArgs, dict[str, Any], _deploy_op("push_weights")),
    "weights_ls": Operation(WeightsListArgs, dict[str, Any], _deploy_op("current_weights")),
    "bill": Operation(BillArgs, Bill, _usage_op("bill")),
    "node_bill": Operation(NodeBillArgs, NodeBill, _usage_op("node_bill")),
    "cost": Operation(CostArgs, CostComparison, _usage_op("cost")),
    "call_show": Operation(CallIdArgs, CallStages, _usage_op("call_stages")),
    "secret_create": Operation(SecretCreateArgs, SecretInfo, _secrets_op("create_secret")),
    "secret_ls": Operation(NoArgs, list[SecretInfo], _secrets_op("list_secrets")),
    "secret_rm": Operation(SecretRemoveArgs, None, _secrets_op("delete_secret")),
    "schedule_runs": Operation(ScheduleRunsArgs, list[ScheduledRunInfo], _schedules_op("schedule_runs")),
    "schedule_run": Operation(ScheduledFunctionArgs, ScheduledRunInfo, _schedules_op("run_now")),
    "blob_has": Operation(BlobArgs, bool, _blob_has),
    "blob_put": Operation(BlobChunk, int, _blob_put),
    "blob_commit": Operation(BlobArgs, Any, _blob_commit),
}
