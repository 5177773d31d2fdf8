"""Per-app bearer tokens: created (shown once, only the hash kept), revoked, listed."""

from __future__ import annotations

import ray

from deployments import constants
from raygpu.ops.contracts import AuthState, TokenCreated, TokenInfo, WebhookSecret
from raygpu.sdk.control import admin_call, gateway_url, store, wait_for_gateway
from raygpu.sdk.errors import NotFoundError


def create_token(app: str) -> TokenCreated:
    """A new token for `app`, returned once; from then on every route of the app needs a token
    (also after every token is revoked, until `raygpu auth off`). The gateway accepts it when this
    returns."""
    created = admin_call("create_token", app)
    wait_for_gateway(gateway_url(), created["generation"], constants.GATEWAY_PICKUP_TIMEOUT_S)
    return TokenCreated(app=app, id=created["id"], token=created["token"])


def revoke_token(app: str, token_id: str) -> None:
    """Revoke a token; the gateway refuses it when this returns. The app stays protected."""
    result = admin_call("revoke_token", app, token_id)
    if not result["revoked"]:
        raise NotFoundError(f"app {app!r} has no active token {token_id!r}; `raygpu token ls {app}` lists them")
    wait_for_gateway(gateway_url(), result["generation"], constants.GATEWAY_PICKUP_TIMEOUT_S)


def set_auth(app: str, protected: bool) -> AuthState:
    """Switch token protection of `app` on (every route needs a token; with none active, nobody
    gets in) or off (public; its active tokens are revoked). In force at the gateway on return."""
    result = admin_call("set_protected", app, protected)
    wait_for_gateway(gateway_url(), result["generation"], constants.GATEWAY_PICKUP_TIMEOUT_S)
    return AuthState(app=app, protected=result["protected"], revoked_tokens=result["revoked"])


def auth_state(app: str) -> AuthState:
    return AuthState(app=app, protected=ray.get(store().is_protected.remote(app)))


def list_tokens(app: str | None = None) -> list[TokenInfo]:
    """Token ids and dates (tokens themselves are never stored)."""
    return [TokenInfo(**t) for t in ray.get(store().tokens.remote(app))]


def webhook_secret(app: str) -> WebhookSecret:
    """The secret `app`'s webhooks are signed with (a receiver verifies the Standard Webhooks
    `webhook-signature`, or the older `x-raygpu-signature`, with it)."""
    from deployments.calls.callbacks import webhook_secret as derive

    if ray.get(store().live_app.remote(app)) is None:
        raise NotFoundError(f"app {app!r} is not deployed; `raygpu ls` lists the deployed apps")
    incarnation = ray.get(store().app_incarnation.remote(app)) or 0
    return WebhookSecret(app=app, secret=derive(admin_call("webhook_signing_key"), app, incarnation))
