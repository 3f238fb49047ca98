"""The self-signed certificate, generated once and kept in the workspace.

A leaf (CA:FALSE, serverAuth), not a CA: a client that trusts the downloaded certificate trusts this server
only, never a certificate someone signs with its key. It names localhost, the host name and, where the
platform says it (Vast.ai's PUBLIC_IPADDR, RunPod's RUNPOD_PUBLIC_IP), the box's public address, so a client
can verify it when it connects to that address. A CA certificate left by an older boot is replaced once, and
so is one that lacks the public address the platform now gives.
"""
from __future__ import annotations

import datetime
import ipaddress
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.credentials import write_private
from app.settings import Settings

SUBJECT = "vLLM appliance"


def public_addresses(settings: Settings) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The box's public IPs the platform gives (PUBLIC_IPADDR, RUNPOD_PUBLIC_IP); a malformed one is an error."""
    found = []
    for name, value in (("PUBLIC_IPADDR", settings.public_ipaddr), ("RUNPOD_PUBLIC_IP", settings.runpod_public_ip)):
        if value.strip():
            try:
                found.append(ipaddress.ip_address(value.strip()))
            except ValueError:
                raise ValueError(f"{name} {value!r} is not an IP address") from None
    return list(dict.fromkeys(found))


def _names(settings: Settings) -> list[x509.GeneralName]:
    loopback = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    hosts = dict.fromkeys(["localhost", socket.gethostname()])
    return ([x509.DNSName(h) for h in hosts]
            + [x509.IPAddress(ip) for ip in dict.fromkeys([*loopback, *public_addresses(settings)])])


def _outdated(settings: Settings) -> str | None:
    """Why the generated certificate must be replaced (a CA from an older boot, a missing public address)."""
    try:
        cert = x509.load_pem_x509_certificate(settings.cert_file.read_bytes())
    except (OSError, ValueError):
        return "it cannot be read"
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "an older boot made it a CA"
    except x509.ExtensionNotFound:
        pass
    try:
        named = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                    .get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        named = set()
    missing = [str(ip) for ip in public_addresses(settings) if ip not in named]
    return f"it does not name the public address {', '.join(missing)}" if missing else None


def ensure_certificate(settings: Settings) -> str | None:
    """Create the self-signed pair unless TLS_CERT/TLS_KEY or a current one exists. Returns why it was
    (re)created ("created" the first time), or None if nothing changed."""
    if settings.tls_cert or settings.tls_key:
        for path, name in ((settings.cert_file, "TLS_CERT"), (settings.key_file, "TLS_KEY")):
            if not path.is_file():
                raise ValueError(f"{name} {path} is not a readable file (set both TLS_CERT and TLS_KEY)")
        return None
    if settings.cert_file.exists() and settings.key_file.exists():
        reason = _outdated(settings)
        if not reason:
            return None
        reason = f"replaced the certificate: {reason}"
    else:
        reason = "created"
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SUBJECT)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(_names(settings)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(settings.key_file, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
    settings.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return reason
