"""Handles on the running control plane of the connected cluster: the store, the meter, and the
gateway's URL (with a wait until the gateway serves a routing-table generation)."""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import ray

from billing.constants import METER_ACTOR_NAME, METER_NAMESPACE
from deployments.store.actor import get_store
from raygpu.sdk.admin import admin_key
from raygpu.sdk.errors import AdminCredentialError, DeployError, NoClusterError

GATEWAY_URL_ENV = "RAYGPU_GATEWAY_URL"


def store() -> Any:
    try:
        return get_store()
    except ValueError:
        raise NoClusterError(
            "the cluster has no raygpu control plane; run `raygpu up --local` (or `raygpu up --address ...` "
            "on a cluster started with `ray up cluster.yaml`)"
        ) from None


def admin_call(method: str, *args: Any) -> Any:
    """Call a store method that changes the control plane, with this machine's admin credential."""
    credential = admin_key()
    try:
        return ray.get(getattr(store(), method).remote(credential, *args))
    except PermissionError as exc:
        raise AdminCredentialError(
            f"the control plane refused the admin credential in $RAYGPU_HOME/admin.key ({exc}); "
            "use the file of the machine that ran `raygpu up` for this cluster"
        ) from None


def meter() -> Any:
    try:
        return ray.get_actor(METER_ACTOR_NAME, namespace=METER_NAMESPACE)
    except ValueError:
        raise NoClusterError("the cluster has no raygpu meter; run `raygpu up` again to install it") from None


def public_url() -> str:
    """What callers outside the cluster call the gateway by (`raygpu up --public-url`), else its own URL."""
    if os.environ.get(GATEWAY_URL_ENV):
        return os.environ[GATEWAY_URL_ENV].rstrip("/")
    return (ray.get(store().get_setting.remote("public_url")) or gateway_url()).rstrip("/")


def gateway_url() -> str:
    if os.environ.get(GATEWAY_URL_ENV):
        return os.environ[GATEWAY_URL_ENV].rstrip("/")
    url = ray.get(store().get_setting.remote("gateway_url"))
    if not url:
        raise NoClusterError(f"the gateway URL is unknown; set {GATEWAY_URL_ENV} or run `raygpu up` again")
    return url


def _loopback_tls(url: str) -> ssl.SSLContext | None:
    """The gateway's own certificate names its public host, not 127.0.0.1: a loopback check of a
    TLS gateway (on the head, by the control plane) skips the name and chain; any other verifies."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "https" or parsed.hostname not in ("127.0.0.1", "::1", "localhost"):
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def wait_for_gateway(url: str, generation: int, wait_s: float) -> None:
    """Block until the gateway serves routing-table generation `generation`, or a later one that
    the store really issued (a gateway still holding a table from before a store restart, or from
    a restored state file, can report a higher number that is not later: it is not accepted)."""
    deadline = time.monotonic() + wait_s
    last_error = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5, context=_loopback_tls(url)) as response:
                served = json.loads(response.read())["generation"]
            if served == generation:
                return
            if served > generation and served <= ray.get(store().ping.remote())["generation"]:
                return  # a change made since ours is served too
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise DeployError(f"the gateway at {url} did not pick up the change within {wait_s:g} s ({last_error})")
