"""Webhooks of spawned calls: which callback URLs are allowed (every address the host resolves to
globally routable, or inside a network the operator allowed), how a delivery is signed (Standard
Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`; and the older
`x-raygpu-signature`), when a failed one is tried again. Pure apart from resolving the host name."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from standardwebhooks import Webhook

# Kept beside the Standard Webhooks headers for one release: receivers move to `webhook-signature`.
SIGNATURE_HEADER = "x-raygpu-signature"
CALLBACK_HEADER = "x-raygpu-callback"
# Pauses before each retry of a delivery that failed (then it gives up): about 13 minutes in all.
RETRY_DELAYS_S = (1.0, 2.0, 5.0, 15.0, 60.0, 120.0, 300.0, 300.0)
DELIVERY_TIMEOUT_S = 10.0
MAX_URL_LENGTH = 2048

Resolver = Callable[[str, int], Iterable[str]]


class CallbackRefused(ValueError):
    """A callback URL raygpu will not post to (HTTP 400 with the reason)."""


def system_resolver(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})


def parse_networks(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """`--callback-allow` values as networks; ValueError naming a bad one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--callback-allow {cidr!r} is not a network (CIDR such as 10.0.0.0/8)") from None
    return networks


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
SITE_LOCAL_V6 = ipaddress.ip_network("fec0::/10")  # deprecated, still routed inside some networks
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (IPv4-mapped, 6to4, Teredo server and client,
    NAT64): where a packet to it ends up, which `is_global` does not look at."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    inside: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        inside.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        inside.append(address.sixtofour)
    if address.teredo is not None:
        inside.extend(address.teredo)
    if any(address in prefix for prefix in NAT64_PREFIXES):
        inside.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return inside


def globally_routable(address: Address) -> bool:
    """Whether `address` is one the public internet routes to, and so is every IPv4 address it
    carries; private, loopback, link-local, shared (100.64.0.0/10, e.g. cloud metadata at
    100.100.100.200), site-local, multicast and reserved addresses are not."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _unicast_global(address.ipv4_mapped)
    if isinstance(address, ipaddress.IPv6Address) and address in SITE_LOCAL_V6:
        return False
    return _unicast_global(address) and all(_unicast_global(inner) for inner in embedded_ipv4(address))


def _unicast_global(address: Address) -> bool:
    return address.is_global and not address.is_multicast


def check_callback_url(
    url: str, allowed: Iterable[str] = (), resolve: Resolver = system_resolver
) -> tuple[str, list[str]]:
    """The URL and the addresses it resolves to, when raygpu may post to it: http(s), a host,
    and every address public or inside an allowed network. CallbackRefused with the reason."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(f"the callback URL is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(f"the callback must be an http(s) URL with a host, not {url!r}")
    if parts.username or parts.password:
        raise CallbackRefused("the callback URL must not carry credentials; sign-check the body instead")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise CallbackRefused(f"the callback URL {url!r} has an invalid port") from None
    try:
        addresses = list(resolve(parts.hostname, port))
    except OSError as exc:
        raise CallbackRefused(f"the callback host {parts.hostname!r} does not resolve: {exc}") from None
    if not addresses:
        raise CallbackRefused(f"the callback host {parts.hostname!r} does not resolve")
    networks = parse_networks(allowed)
    for raw in addresses:
        address = ipaddress.ip_address(raw.split("%", 1)[0])
        if not globally_routable(address) and not any(address in network for network in networks):
            raise CallbackRefused(
                f"the callback host {parts.hostname!r} is at {address}, not a globally routable address "
                "(loopback, private, link-local, shared or reserved); raygpu posts there only when "
                "`raygpu up --callback-allow CIDR` allows it"
            )
    return url, addresses


def webhook_secret(signing_key: str, app: str, incarnation: int = 0) -> str:
    """The secret an app's webhooks are signed with, derived from the cluster's signing key (which
    only the control plane and the admin hold): apps never learn each other's secrets, and an app
    deployed again after it was deleted (its `incarnation`) gets a new one."""
    label = f"webhook:{app}" if not incarnation else f"webhook:{app}#{incarnation}"
    return "whsec_" + hmac.new(signing_key.encode(), label.encode(), hashlib.sha256).hexdigest()


def standard_webhook_headers(
    secret: str, message_id: str, body: bytes, now: dt.datetime | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery attempt: the message id (the same for every
    attempt, so a receiver can drop duplicates), the time of this attempt and the signature of
    both with the body, so a captured delivery cannot be replayed once its time is past the
    receiver's tolerance (5 minutes in the `standardwebhooks` package)."""
    now = now or dt.datetime.now(dt.UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
    }


def sign(secret: str, body: bytes) -> str:
    """The `x-raygpu-signature` of a delivery: `sha256=` and the HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver runs: whether `signature` is raygpu's for `body` under the app's secret."""
    return hmac.compare_digest(sign(secret, body), signature)
