"""The admin credential of a cluster: its head keeps only the key's hash (the operator keeps the key),
a control plane that creates the store acts with a credential of its own held in memory, and one
that finds the store running needs the operator's key."""

import asyncio
import hashlib
import os
import stat

import pytest

from raygpu.sdk.admin import ADMIN_HASH_FILE, admin_key, admin_key_hash, cluster_admin
from raygpu.sdk.errors import AdminCredentialError


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYGPU_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAYGPU_ADMIN_TOKEN", raising=False)
    return tmp_path / "home"


def test_a_clusters_first_up_makes_a_key_and_keeps_only_its_hash(home, tmp_path):
    state = tmp_path / "state"
    first = cluster_admin(state, None)
    assert first.new and first.key.startswith("rga_") and first.key_hash == admin_key_hash(first.key)
    held = (state / ADMIN_HASH_FILE).read_text().strip()
    assert held == first.key_hash and stat.S_IMODE((state / ADMIN_HASH_FILE).stat().st_mode) == 0o600
    assert first.key not in "".join(p.read_text() for p in state.rglob("*") if p.is_file())
    assert not (home / "admin.key").exists()
    # a later up: the hash is read; a key given must be the cluster's
    again = cluster_admin(state, None)
    assert again.key is None and again.key_hash == held and not again.new
    assert cluster_admin(state, first.key).key == first.key
    with pytest.raises(AdminCredentialError, match="not this cluster's admin key"):
        cluster_admin(state, "rga_" + "z" * 40)
    with pytest.raises(AdminCredentialError, match="does not hold a raygpu admin credential"):
        cluster_admin(state, "hunter2")


def test_a_key_the_operator_gives_or_an_older_raygpu_left_becomes_the_clusters(home, tmp_path):
    given = "rga_" + "g" * 40
    made = cluster_admin(tmp_path / "a", given)
    assert made.key == given and not made.new
    home.mkdir()
    legacy = "rga_" + "l" * 40
    fd = os.open(home / "admin.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, legacy.encode())
    os.close(fd)
    assert cluster_admin(tmp_path / "b", None).key_hash == admin_key_hash(legacy)


def test_the_cli_takes_the_key_from_the_environment(home, monkeypatch):
    monkeypatch.setenv("RAYGPU_ADMIN_TOKEN", "rga_" + "e" * 40)
    assert admin_key() == "rga_" + "e" * 40
    monkeypatch.setenv("RAYGPU_ADMIN_TOKEN", "nope")
    with pytest.raises(AdminCredentialError, match="RAYGPU_ADMIN_TOKEN"):
        admin_key()


def test_the_store_takes_the_operators_key_and_its_creators_own_credential_only(tmp_path):
    from deployments.store.actor import ControlPlaneStore

    operator, own = "rga_" + "o" * 40, "rgi_" + "i" * 40
    store = ControlPlaneStore(
        str(tmp_path / "state.db"), hashlib.sha256(operator.encode()).hexdigest(), admin_key_hash(own)
    )

    async def scenario():
        assert await store.check_admin(operator) and await store.check_admin(own)
        for wrong in ("", None, "rga_" + "x" * 40, admin_key_hash(own)):
            with pytest.raises(PermissionError):
                await store.check_admin(wrong)
        await store.set_setting(own, "k", 1)
        with pytest.raises(PermissionError):
            await store.webhook_signing_key("rgi_" + "x" * 40)

    asyncio.run(scenario())
    closed = ControlPlaneStore(str(tmp_path / "other.db"))

    async def fails_closed():
        with pytest.raises(PermissionError):
            await closed.check_admin(operator)

    asyncio.run(fails_closed())
