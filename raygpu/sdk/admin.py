"""The admin credential: a random secret in $RAYGPU_HOME/admin.key (mode 0600) that the CLI sends
with every call that changes the control plane (deploys, app deletion, tokens, weights, settings).
The store keeps only its hash; replicas are never given it. No Ray."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from deployments import constants
from raygpu.sdk.errors import AdminCredentialError
from raygpu.sdk.home import raygpu_home

ADMIN_KEY_FILE = "admin.key"
ADMIN_KEY_PREFIX = constants.ADMIN_KEY_PREFIX


def admin_key_path() -> Path:
    return raygpu_home() / ADMIN_KEY_FILE


def admin_key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_admin_key() -> str:
    """The admin key of this RAYGPU_HOME, created (mode 0600) when there is none yet."""
    path = admin_key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return admin_key()
    key = ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


_request_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("raygpu_admin_key", default=None)


@contextlib.contextmanager
def using_admin_key(key: str) -> Iterator[None]:
    """Within this block, `admin_key()` is `key`: the admin API acts with the credential its caller
    presented (already checked by the store), never with a file of the head's."""
    token = _request_key.set(key)
    try:
        yield
    finally:
        _request_key.reset(token)


def admin_key() -> str:
    """The admin key the CLI holds; refuse a missing, empty or group/world-readable file."""
    presented = _request_key.get()
    if presented is not None:
        return presented
    path = admin_key_path()
    try:
        mode = path.stat().st_mode
        key = path.read_text().strip()
    except FileNotFoundError:
        raise AdminCredentialError(
            f"no admin credential at {path}: this call changes the control plane. Run it where the cluster "
            f"was started (`raygpu up` writes the file), or copy that file here with mode 0600"
        ) from None
    except OSError as exc:
        raise AdminCredentialError(f"cannot read the admin credential {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AdminCredentialError(
            f"the admin credential {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )
    if not key.startswith(ADMIN_KEY_PREFIX) or len(key) < 20:
        raise AdminCredentialError(f"{path} does not hold a raygpu admin credential; restore it from the head node")
    return key
