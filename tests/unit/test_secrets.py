"""Secrets without a cluster: values encrypted at rest under the state directory's key, checked where
they enter, kept out of specs and listings, handed only to the function that names them, and read by
the CLI from KEY=VALUE, a dotenv file or a JSON object."""

import asyncio
import hashlib
import io
import json
import sqlite3
import stat

import pytest

import raygpu
from deployments.secrets import SecretError, check_values, decrypt, encrypt, ensure_secret_key
from deployments.spec import DeployedFunction, FunctionSpec
from deployments.store.actor import ControlPlaneStore
from raygpu.cli.secrets import secret_values
from raygpu.sdk.errors import InvalidSpecError

ADMIN = "rga_" + "a" * 40


def test_values_are_encrypted_under_a_private_key_made_once(tmp_path):
    key = ensure_secret_key(tmp_path)
    assert ensure_secret_key(tmp_path) == key
    assert stat.S_IMODE((tmp_path / "secrets.key").stat().st_mode) == 0o600
    token = encrypt(key, {"HF_TOKEN": "hf_secret_value"})
    assert b"hf_secret_value" not in token and decrypt(key, token) == {"HF_TOKEN": "hf_secret_value"}
    with pytest.raises(SecretError, match="could not be decrypted"):
        decrypt(ensure_secret_key(tmp_path / "other"), token)


@pytest.mark.parametrize(
    "values, message",
    [
        ({}, "at least one"),
        ({"1X": "v"}, "not an environment variable name"),
        ({"A-B": "v"}, "not an environment variable name"),
        ({"PATH": "/evil"}, "may not set"),
        ({"LD_PRELOAD": "x.so"}, "may not set"),
        ({"A": 1}, "must be a string"),
        ({"A": "x\x00y"}, "without NUL"),
        ({"A": "x" * (64 * 1024 + 1)}, "at most"),
        ({f"K{i}": "v" for i in range(101)}, "at most 100 keys"),
    ],
)
def test_bad_values_are_refused_with_the_reason(values, message):
    with pytest.raises(SecretError, match=message):
        check_values(values)


def test_units_name_secrets_and_bad_names_fail_at_decoration():
    app = raygpu.App("secretive")

    @app.function(secrets=[raygpu.Secret.from_name("hf"), raygpu.Secret.from_name("db"), raygpu.Secret.from_name("hf")])
    def f() -> int:
        return 1

    @app.cls(secrets=[raygpu.Secret.from_name("hf")])
    class C:
        @raygpu.method()
        def m(self) -> int:
            return 1

    assert f.spec.secrets == ["hf", "db"] and app.classes["C"]._raygpu_spec.secrets == ["hf"]
    with pytest.raises(InvalidSpecError, match="not a secret name"):
        raygpu.Secret.from_name("no spaces")
    with pytest.raises(InvalidSpecError, match="takes a list"):

        @app.function(secrets=raygpu.Secret.from_name("hf"))
        def g() -> int:
            return 1

    assert "hf_value" not in FunctionSpec(name="x", secrets=["hf"]).model_dump_json()


def test_the_store_keeps_values_encrypted_and_gives_them_only_to_the_function_naming_them(tmp_path):
    store = ControlPlaneStore(str(tmp_path / "state.db"), hashlib.sha256(ADMIN.encode()).hexdigest())
    user = DeployedFunction(spec=FunctionSpec(name="uses", secrets=["hf"]), deployment="uses")
    other = DeployedFunction(spec=FunctionSpec(name="other"), deployment="other")

    async def scenario():
        with pytest.raises(PermissionError):
            await store.put_secret("", "hf", {"HF_TOKEN": "hf_value"})
        assert await store.put_secret(ADMIN, "hf", {"HF_TOKEN": "hf_value"}) == {"name": "hf", "keys": ["HF_TOKEN"]}
        with pytest.raises(SecretError, match="--force"):
            await store.put_secret(ADMIN, "hf", {"HF_TOKEN": "new"})
        await store.put_secret(ADMIN, "hf", {"HF_TOKEN": "hf_value", "HF_HOME": "/models"}, True)
        assert await store.missing_secrets(["hf", "db"]) == ["db"]
        version = store.db.begin_version("shop", "src", [user.model_dump(), other.model_dump()])
        store.db.mark_live("shop", version)
        env = await store.secret_environment("shop", version, "uses")
        assert env == {"HF_TOKEN": "hf_value", "HF_HOME": "/models"}
        assert await store.secret_environment("shop", version, "other") == {}
        assert await store.secret_environment("shop", version + 1, "uses") == {}  # no such version
        listed = await store.secret_list(ADMIN)
        assert listed[0]["apps"] == ["shop"] and listed[0]["keys"] == ["HF_HOME", "HF_TOKEN"]
        assert "hf_value" not in json.dumps(listed)
        with pytest.raises(SecretError, match="used by the live version of shop"):
            await store.delete_secret(ADMIN, "hf")
        with pytest.raises(PermissionError):
            await store.secret_list("rga_" + "b" * 40)
        assert await store.delete_secret(ADMIN, "hf", True)
        with pytest.raises(SecretError, match="does not exist"):
            await store.secret_environment("shop", version, "uses")

    asyncio.run(scenario())
    raw = sqlite3.connect(tmp_path / "state.db").execute("SELECT * FROM app_versions").fetchall()
    dump = open(tmp_path / "state.db", "rb").read()
    assert b"hf_value" not in dump and "hf_value" not in repr(raw)


def test_the_cli_reads_variables_from_pairs_a_dotenv_file_or_json(tmp_path, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text('# keys\nHF_TOKEN="hf_x"\nexport DB_URL=postgres://u@h/db\n')
    assert secret_values((), str(dotenv), None) == {"HF_TOKEN": "hf_x", "DB_URL": "postgres://u@h/db"}
    as_json = tmp_path / "s.json"
    as_json.write_text('{"A": "1"}')
    assert secret_values(("B=2=3",), None, str(as_json)) == {"A": "1", "B": "2=3"}
    monkeypatch.setattr("sys.stdin", io.StringIO('{"C": "from stdin"}'))
    assert secret_values((), None, "-") == {"C": "from stdin"}
    for pairs, dotenv_file, json_file, message in (
        ((), None, None, "give the variables"),
        (("NOVALUE",), None, None, "not KEY=VALUE"),
    ):
        with pytest.raises(ValueError, match=message):
            secret_values(pairs, dotenv_file, json_file)
    as_json.write_text('{"A": 1}')
    with pytest.raises(ValueError, match="string values"):
        secret_values((), None, str(as_json))
