"""A self-signed certificate for the gateway (`raygpu up --tls-self-signed`): made once in the state
directory and kept (the fingerprint callers pinned stays valid across restarts), its key 0600."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from raygpu.sdk.pinning import certificate_fingerprint

CERT_FILE = "gateway-tls.pem"
KEY_FILE = "gateway-tls.key"
VALID_DAYS = 825


def ensure_self_signed(state_dir: str | Path, hosts: list[str]) -> tuple[str, str, str]:
    """(certificate path, key path, SHA-256 fingerprint) of the gateway's self-signed certificate,
    made for `hosts` (names or IP addresses) when the state directory has none."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if not (cert_path.exists() and key_path.exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(h for h in hosts if h):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "raygpu gateway")])
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(key, hashes.SHA256())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    return str(cert_path), str(key_path), certificate_fingerprint(der)
