"""Secrets on the real cluster: a deploy naming a missing one changes nothing; a function and a class's
enter hook see the variables; the values appear nowhere else (status, Serve's config, the store's
spec rows, Ray's actor table, replica logs, `secret ls`); a secret in use is not removed."""

import json

import pytest
import ray
import ray.util.state
from conftest import APPS

from raygpu.sdk.errors import DeployError

VALUE = "sv_7f3c1e0b9d2a4c6e8f10a2b4c6d8e0f2"


def test_a_function_and_an_enter_hook_see_their_secret_and_nothing_else_does(cluster, tmp_path):
    refused = pytest.raises(DeployError, match="names secret 'secretive-vault', which does not exist")
    with refused:
        cluster.deploy(APPS / "secretive.py")
    assert all(a["name"] != "secretive" for a in json.loads(cluster.cli("ls", "--json").stdout)["apps"])
    dotenv = tmp_path / "vault.env"
    dotenv.write_text(f"VAULT_TOKEN={VALUE}\nVAULT_REGION=eu\n")
    out = cluster.cli("secret", "create", "secretive-vault", "--from-dotenv", str(dotenv))
    assert out.returncode == 0, out.stderr
    again = cluster.cli("secret", "create", "secretive-vault", "X=1")
    assert again.returncode == 1 and "--force" in again.stderr
    cluster.deploy(APPS / "secretive.py")

    assert cluster.post("/secretive/reveal", {"key": "VAULT_TOKEN"}).json() == VALUE
    assert cluster.post("/secretive/reveal", {"key": "VAULT_REGION"}).json() == "eu"
    assert cluster.post("/secretive/Greeter/token_at_enter", {}).json() == VALUE

    listed = json.loads(cluster.cli("secret", "ls", "--json").stdout)
    vault = next(s for s in listed if s["name"] == "secretive-vault")
    assert vault["keys"] == ["VAULT_REGION", "VAULT_TOKEN"] and vault["apps"] == ["secretive"]
    removal = cluster.cli("secret", "rm", "secretive-vault")
    assert removal.returncode == 1 and "used by the live version of secretive" in removal.stderr

    from deployments.serve_apps import serve_details
    from deployments.store.actor import get_store

    places = {
        "secret ls": json.dumps(listed),
        "status --json": cluster.cli("status", "secretive", "--json").stdout,
        "Serve's config": json.dumps(serve_details(), default=str),
        "the store's spec rows": json.dumps(ray.get(get_store().live_app.remote("secretive"))),
        "Ray's actor table": json.dumps(ray.util.state.list_actors(detail=True, limit=10_000), default=str),
        "replica logs": cluster.cli("logs", "secretive/reveal").stdout
        + cluster.cli("logs", "secretive/Greeter").stdout,
    }
    leaked = [where for where, text in places.items() if VALUE in text]
    assert not leaked, f"the secret's value is in {leaked}"
