"""Secrets as the CLI manages them (create, list, remove), with the admin credential."""

from __future__ import annotations

from raygpu.ops.contracts import SecretInfo
from raygpu.sdk.control import admin_call
from raygpu.sdk.errors import NotFoundError, RaygpuError


def create_secret(name: str, values: dict[str, str], replace: bool = False) -> SecretInfo:
    """Create a secret (replace an existing one with `replace`); the next replicas that start see it."""
    try:
        admin_call("put_secret", name, values, replace)
    except ValueError as exc:
        raise RaygpuError(str(getattr(exc, "cause", None) or exc)) from None
    return next(s for s in list_secrets() if s.name == name)


def list_secrets() -> list[SecretInfo]:
    return [SecretInfo(**row) for row in admin_call("secret_list")]


def delete_secret(name: str, force: bool = False) -> None:
    try:
        existed = admin_call("delete_secret", name, force)
    except ValueError as exc:
        raise RaygpuError(str(getattr(exc, "cause", None) or exc)) from None
    if not existed:
        raise NotFoundError(f"there is no secret {name!r}; `raygpu secret ls` lists them")
