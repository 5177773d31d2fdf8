"""Per-app bearer tokens: created (shown once, only the hash kept), revoked, listed."""

from __future__ import annotations

import ray

from deployments import constants
from raygpu.contracts import TokenCreated, TokenInfo
from raygpu.control import gateway_url, store, wait_for_gateway
from raygpu.errors import NotFoundError


def create_token(app: str) -> TokenCreated:
    """A new token for `app`, returned once; the gateway accepts it when this returns."""
    created = ray.get(store().create_token.remote(app))
    wait_for_gateway(gateway_url(), created["generation"], constants.GATEWAY_PICKUP_TIMEOUT_S)
    return TokenCreated(app=app, id=created["id"], token=created["token"])


def revoke_token(app: str, token_id: str) -> None:
    """Revoke a token; the gateway refuses it when this returns."""
    result = ray.get(store().revoke_token.remote(app, token_id))
    if not result["revoked"]:
        raise NotFoundError(f"app {app!r} has no active token {token_id!r}; `raygpu token ls {app}` lists them")
    wait_for_gateway(gateway_url(), result["generation"], constants.GATEWAY_PICKUP_TIMEOUT_S)


def list_tokens(app: str | None = None) -> list[TokenInfo]:
    """Token ids and dates (tokens themselves are never stored)."""
    return [TokenInfo(**t) for t in ray.get(store().tokens.remote(app))]
