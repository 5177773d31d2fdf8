"""Secrets: named sets of environment variables a function sees when its code runs, kept encrypted at
rest in the control-plane store (Fernet, from the `cryptography` package) under a key in the
cluster's state directory (0600). The key protects copies of the database and its backups, not the
head: code running there can read the key file. Pure: no Ray."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

SECRET_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
ENV_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_KEYS = 100
MAX_VALUE_BYTES = 64 * 1024
MAX_SECRET_BYTES = 256 * 1024
SECRET_KEY_FILE = "secrets.key"
# Variables a secret may not set: they would change how the replica's process itself runs.
RESERVED_KEYS = frozenset({"PATH", "PYTHONPATH", "PYTHONHOME", "LD_PRELOAD", "LD_LIBRARY_PATH", "HOME", "USER"})


class SecretError(ValueError):
    """A secret name or value the control plane refuses, with the reason."""


def check_secret_name(name: Any) -> str:
    if not isinstance(name, str) or not SECRET_NAME_PATTERN.match(name):
        raise SecretError(f"{name!r} is not a secret name: a letter, then up to 62 letters, digits, '_', '.' or '-'")
    return name


def check_values(values: Any) -> dict[str, str]:
    """A secret's variables: 1-100 environment variable names to string values, 64 KiB each, 256 KiB in all."""
    if not isinstance(values, dict) or not values:
        raise SecretError("a secret holds at least one KEY=VALUE")
    if len(values) > MAX_KEYS:
        raise SecretError(f"a secret holds at most {MAX_KEYS} keys, not {len(values)}")
    total = 0
    for key, value in values.items():
        if not isinstance(key, str) or not ENV_KEY_PATTERN.match(key):
            raise SecretError(
                f"{key!r} is not an environment variable name (letters, digits and '_', not first a digit)"
            )
        if key.upper() in RESERVED_KEYS:
            raise SecretError(f"{key} would change how the replica's process runs; a secret may not set it")
        if not isinstance(value, str):
            raise SecretError(f"the value of {key} must be a string")
        size = len(value.encode())
        if size > MAX_VALUE_BYTES or "\x00" in value:
            raise SecretError(f"the value of {key} must be text without NUL bytes, at most {MAX_VALUE_BYTES} bytes")
        total += size
    if total > MAX_SECRET_BYTES:
        raise SecretError(f"a secret's values take at most {MAX_SECRET_BYTES} bytes, not {total}")
    return dict(values)


def ensure_secret_key(state_dir: str | Path) -> bytes:
    """The cluster's secret encryption key ($STATE/secrets.key, 0600), made on first use."""
    path = Path(state_dir) / SECRET_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


def encrypt(key: bytes, values: dict[str, str]) -> bytes:
    return Fernet(key).encrypt(json.dumps(values, separators=(",", ":")).encode())


def decrypt(key: bytes, token: bytes) -> dict[str, str]:
    """A secret's variables; SecretError when the key is not the one it was encrypted with."""
    try:
        return json.loads(Fernet(key).decrypt(token))
    except InvalidToken:
        raise SecretError(
            "a secret could not be decrypted with the state directory's secrets.key (was the key replaced?); "
            "create the secret again with --force"
        ) from None
