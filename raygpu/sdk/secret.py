"""`raygpu.Secret`: a named set of environment variables kept encrypted in the cluster
(`raygpu secret create NAME ...`); a function that names it sees its variables when its code runs."""

from __future__ import annotations

from deployments.secrets import SecretError, check_secret_name
from raygpu.sdk.errors import InvalidSpecError


class Secret:
    """A reference to a secret by name: `@app.function(secrets=[raygpu.Secret.from_name("hf")])`."""

    def __init__(self, name: str):
        try:
            self.secret_name = check_secret_name(name)
        except SecretError as exc:
            raise InvalidSpecError(str(exc)) from None

    @classmethod
    def from_name(cls, name: str) -> Secret:
        return cls(name)

    def __repr__(self) -> str:
        return f"raygpu.Secret.from_name({self.secret_name!r})"
