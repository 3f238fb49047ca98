"""The self-signed certificate, generated once and kept in the workspace."""
from __future__ import annotations

import datetime
import ipaddress
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.credentials import write_private
from app.settings import Settings


def ensure_certificate(settings: Settings) -> bool:
    """Create the self-signed pair unless TLS_CERT/TLS_KEY or an earlier one exists. True if created."""
    if settings.tls_cert or settings.tls_key:
        for path, name in ((settings.cert_file, "TLS_CERT"), (settings.key_file, "TLS_KEY")):
            if not path.is_file():
                raise ValueError(f"{name} {path} is not a readable file (set both TLS_CERT and TLS_KEY)")
        return False
    if settings.cert_file.exists() and settings.key_file.exists():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    names = [x509.DNSName("localhost"), x509.DNSName(host),
             x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vLLM appliance")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    write_private(settings.key_file, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
    settings.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True
