"""The CLI's way to a cluster: `--address` as a Ray driver, else the login of `raygpu login` through
the gateway; the login file is private; admin request bodies are checked field by field."""

import os
import stat

import pytest
from pydantic import ValidationError

from raygpu.ops.operations import DriverOperations, GatewayOperations, Login, operations, read_login, save_login
from raygpu.ops.table import OPERATIONS, BlobChunk, DeployArgs
from raygpu.sdk.errors import AdminCredentialError


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYGPU_HOME", str(tmp_path))
    for name in ("RAYGPU_ADDRESS", "RAYGPU_GATEWAY", "RAYGPU_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_the_login_is_kept_private_and_a_readable_one_is_refused(home):
    path = save_login("https://gpu.example.com/", "rga_secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_login() == Login(url="https://gpu.example.com", token="rga_secret")
    os.chmod(path, 0o644)
    with pytest.raises(AdminCredentialError, match="chmod 600"):
        read_login()
    path.write_text("not json")
    os.chmod(path, 0o600)
    with pytest.raises(AdminCredentialError, match="raygpu login"):
        read_login()


def test_a_login_routes_commands_through_the_gateway_and_an_address_overrides_it(home, monkeypatch):
    save_login("https://10.0.0.5:8000", "rga_secret")
    target = operations(None)
    assert isinstance(target, GatewayOperations) and target.login.url == "https://10.0.0.5:8000"
    monkeypatch.setenv("RAYGPU_GATEWAY", "https://other:8000")
    with pytest.raises(AdminCredentialError, match="RAYGPU_ADMIN_TOKEN"):
        operations(None)  # a gateway without a token never sends an anonymous admin call
    monkeypatch.setenv("RAYGPU_ADMIN_TOKEN", "rga_other")
    assert operations(None).login == Login(url="https://other:8000", token="rga_other")


def test_the_admin_credential_never_goes_over_plain_http_to_another_host_unless_the_operator_says_so(home, monkeypatch):
    import requests
    from click.testing import CliRunner

    from raygpu.cli import main

    monkeypatch.setattr(requests.Session, "request", lambda *a, **k: pytest.fail("a connection was made"))
    for url in ("http://10.0.0.5:8000", "http://gpu.example.com", "http://[2001:db8::1]:8000"):
        with pytest.raises(AdminCredentialError, match="--insecure"):
            GatewayOperations(Login(url=url, token="rga_x"))
        out = CliRunner().invoke(main, ["login", url, "--token", "rga_x"])
        assert out.exit_code == 1 and "--insecure" in out.stderr and "plain HTTP" in out.stderr
    assert not (home / "login.json").exists()
    for url in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "https://gpu.example.com"):
        GatewayOperations(Login(url=url, token="rga_x"))
    GatewayOperations(Login(url="http://10.0.0.5:8000", token="rga_x", insecure=True))
    monkeypatch.setenv("RAYGPU_GATEWAY", "http://10.0.0.5:8000")
    monkeypatch.setenv("RAYGPU_ADMIN_TOKEN", "rga_x")
    with pytest.raises(AdminCredentialError, match="RAYGPU_INSECURE"):
        operations(None)
    monkeypatch.setenv("RAYGPU_INSECURE", "1")
    assert operations(None).login.insecure


def test_an_unreachable_gateway_says_so():
    from raygpu.sdk.errors import NoClusterError

    with pytest.raises(NoClusterError, match="cannot reach the raygpu gateway at http://127.0.0.1:1"):
        GatewayOperations(Login(url="http://127.0.0.1:1", token="rga_x"), timeout_s=2).ls()


def test_both_ways_to_a_cluster_are_made_from_the_one_table():
    for name in OPERATIONS:
        assert callable(getattr(DriverOperations, name)) and callable(getattr(GatewayOperations, name)), name


def test_arguments_are_checked_on_the_client_before_anything_is_sent(monkeypatch):
    sent = []
    target = GatewayOperations(Login(url="http://127.0.0.1:1", token="rga_x"))
    monkeypatch.setattr(target, "call", lambda name, **args: sent.append((name, args)) or {"by": "x"})
    with pytest.raises(ValidationError):
        target.bill("app", None, None, "week")  # `by` is function or day
    with pytest.raises(TypeError, match="takes 2 arguments"):
        target.weights_ls("a", "f", "extra")
    assert sent == []
    target.token_revoke("app", "abc")
    assert sent == [("token_revoke", {"app": "app", "token_id": "abc"})]


def test_admin_bodies_are_checked_before_anything_runs():
    with pytest.raises(ValidationError):
        DeployArgs.model_validate({"app": "a", "source": "s", "units": [], "check": False})  # no units
    with pytest.raises(ValidationError):
        DeployArgs.model_validate(
            {"app": "a", "source": "s", "units": [{"spec": {"name": "f"}, "payload": "AA=="}], "surprise": 1}
        )
    unit = DeployArgs.model_validate(
        {"app": "a", "source": "s", "units": [{"spec": {"name": "f"}, "payload": "AAEC"}]}
    ).units[0]
    assert unit.payload == b"\x00\x01\x02"
    with pytest.raises(ValidationError):
        BlobChunk.model_validate({"name": "../../etc/passwd", "offset": 0, "data": ""})
    with pytest.raises(ValidationError):
        BlobChunk.model_validate({"name": "a" * 64, "offset": -1, "data": ""})


def test_a_pinned_login_keeps_its_fingerprint_and_bad_pins_are_refused_before_any_connection(home, monkeypatch):
    import requests
    from click.testing import CliRunner

    from raygpu.cli import main

    fingerprint = "ab" * 32
    path = save_login("https://gpu.example.com:8000", "rga_x", fingerprint=fingerprint)
    assert read_login().fingerprint == fingerprint
    from raygpu.sdk.pinning import PinnedAdapter

    pinned = operations(None).session
    adapter = pinned.get_adapter("https://gpu.example.com:8000")
    assert isinstance(adapter, PinnedAdapter) and adapter.fingerprint == fingerprint
    assert pinned.verify is False  # the pin stands in for the CA
    path.unlink()
    monkeypatch.setattr(requests.Session, "request", lambda *a, **k: pytest.fail("a connection was made"))
    for args, message in (
        (["login", "https://gpu.example.com", "--token", "rga_x", "--fingerprint", "nope"], "not a SHA-256"),
        (["login", "http://127.0.0.1:8000", "--token", "rga_x", "--fingerprint", fingerprint], "HTTPS gateway"),
        (["up", "--local", "--tls-self-signed"], "--tls-self-signed"),
    ):
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 1 and message in out.stderr, out.output
    with pytest.raises(ValidationError):
        Login(url="https://x", token="t", fingerprint="zz")
