"""The admin credential: a random secret that the CLI sends with every call that changes the control
plane (deploys, app deletion, tokens, weights, settings). A local cluster keeps it in
$RAYGPU_HOME/admin.key (mode 0600: the operator's own machine); a cluster's head keeps only its hash
(`admin.key.sha256` in the state directory) and the operator keeps the key (`RAYGPU_ADMIN_TOKEN`, or
`raygpu login`). The store keeps only hashes; replicas are never given it. No Ray."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from deployments import constants
from raygpu.sdk.errors import AdminCredentialError
from raygpu.sdk.home import raygpu_home

ADMIN_KEY_FILE = "admin.key"
ADMIN_HASH_FILE = "admin.key.sha256"  # in a cluster's state directory: all its head keeps of the key
ADMIN_TOKEN_ENV = "RAYGPU_ADMIN_TOKEN"
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
    """The admin key the CLI holds ($RAYGPU_ADMIN_TOKEN, else the file); refuse a missing, empty or
    group/world-readable file."""
    presented = _request_key.get()
    if presented is not None:
        return presented
    given = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if given:
        if not given.startswith(ADMIN_KEY_PREFIX) or len(given) < 20:
            raise AdminCredentialError(f"${ADMIN_TOKEN_ENV} does not hold a raygpu admin credential (rga_...)")
        return given
    return admin_key_file(admin_key_path())


def admin_key_file(path: Path) -> str:
    """The admin key in `path`; refuse a missing, empty or group/world-readable file."""
    try:
        mode = path.stat().st_mode
        key = path.read_text().strip()
    except FileNotFoundError:
        raise AdminCredentialError(
            f"no admin credential at {path}: this call changes the control plane. Run it where the local "
            f"cluster was started (`raygpu up --local` writes the file); for a cluster, set ${ADMIN_TOKEN_ENV} "
            "to the key `raygpu up --address` printed, or `raygpu login`"
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


@dataclasses.dataclass(frozen=True)
class ClusterAdmin:
    """The admin credential as `raygpu up --address` hands it to the control plane: the key when the
    operator gave it (or it was just made: `new`), and its hash, which is all the head keeps."""

    key: str | None
    key_hash: str
    new: bool


def cluster_admin(state_dir: Path, given: str | None) -> ClusterAdmin:
    """The admin credential of the cluster whose state lives in `state_dir`. Its first `raygpu up`
    makes a key (or takes `given`), keeps only the hash there (mode 0600) and returns the key once to
    print; later ones read the hash and check `given` against it (AdminCredentialError when it is not
    the cluster's key). A key left in $RAYGPU_HOME/admin.key by an older raygpu becomes the cluster's."""
    hash_path = Path(state_dir) / ADMIN_HASH_FILE
    if given is not None and (not given.startswith(ADMIN_KEY_PREFIX) or len(given) < 20):
        raise AdminCredentialError(f"${ADMIN_TOKEN_ENV} does not hold a raygpu admin credential (rga_...)")
    if hash_path.exists():
        known = hash_path.read_text().strip()
        if given is not None and not hmac.compare_digest(admin_key_hash(given), known):
            raise AdminCredentialError(
                f"${ADMIN_TOKEN_ENV} is not this cluster's admin key ({hash_path} holds its hash)"
            )
        return ClusterAdmin(given, known, False)
    legacy = admin_key_path()
    key, new = given, False
    if key is None and legacy.exists():
        key = admin_key_file(legacy)
    if key is None:
        key, new = ADMIN_KEY_PREFIX + secrets.token_urlsafe(32), True
    hash_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(hash_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(admin_key_hash(key) + "\n")
    return ClusterAdmin(key, admin_key_hash(key), new)
