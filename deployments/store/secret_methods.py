"""The store actor's secret methods (a part of deployments.store.actor.ControlPlaneStore): created,
listed and removed with the admin credential; a replica gets the values of the secrets its own
function names, in its live or deploying version, and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployments.secrets import SecretError, check_secret_name, check_values, decrypt, encrypt, ensure_secret_key
from deployments.store.db import StateDB


class SecretMethods:
    """Secrets over the store's StateDB (`self.db`), encrypted under the state directory's key."""

    db: StateDB
    db_path: str

    _check_admin: Callable[[Any], None]  # the store actor's: refuses anything but the admin credential

    def _secret_key(self) -> bytes:
        return ensure_secret_key(Path(self.db_path).parent)

    async def put_secret(
        self, credential: str, name: str, values: dict[str, str], replace: bool = False
    ) -> dict[str, Any]:
        """Create (or with `replace`, replace) a secret; its name and key names."""
        self._check_admin(credential)
        check_secret_name(name)
        checked = check_values(values)
        if not self.db.put_secret(name, list(checked), encrypt(self._secret_key(), checked), bool(replace)):
            raise SecretError(f"secret {name!r} exists; replace it with --force")
        return {"name": name, "keys": sorted(checked)}

    async def secret_list(self, credential: str) -> list[dict[str, Any]]:
        """Every secret's name, key names, times and the apps whose live version names it (no values)."""
        self._check_admin(credential)
        used = self.db.secrets_in_use()
        return [{**row, "apps": used.get(row["name"], [])} for row in self.db.secret_rows()]

    async def delete_secret(self, credential: str, name: str, force: bool = False) -> bool:
        """Remove a secret (refused while a live version names it, unless `force`); whether it existed."""
        self._check_admin(credential)
        check_secret_name(name)
        apps = self.db.secrets_in_use().get(name, [])
        if apps and not force:
            raise SecretError(
                f"secret {name!r} is used by the live version of {', '.join(apps)}; their replicas could not "
                "start without it. Deploy them without it first, or remove it with --force"
            )
        return self.db.delete_secret(name)

    async def missing_secrets(self, names: list[str]) -> list[str]:
        """Which of these secret names do not exist (a deploy checks before anything changes)."""
        known = {row["name"] for row in self.db.secret_rows()}
        return sorted({n for n in names if isinstance(n, str)} - known)

    async def secret_environment(self, app: str, version: int, function: str) -> dict[str, str]:
        """The variables of the secrets `function` of `app`'s live or deploying `version` names
        (what its replica sets before its code runs). SecretError when one is missing."""
        names = self.db.function_secrets(app, version, function) if isinstance(version, int) else None
        if not names:
            return {}
        key = self._secret_key()
        environment: dict[str, str] = {}
        for name in names:
            token = self.db.secret_ciphertext(name)
            if token is None:
                raise SecretError(
                    f"secret {name!r}, which {app}/{function} names, does not exist: `raygpu secret create {name} ...`"
                )
            environment.update(decrypt(key, token))
        return environment
