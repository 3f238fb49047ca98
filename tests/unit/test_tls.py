"""app/tls.py: the generated certificate is a leaf naming the public address; an older CA is replaced once."""
from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app import tls
from app.settings import Settings


def settings(tmp_path, **env: str) -> Settings:
    s = Settings(WORKSPACE=str(tmp_path), **env)
    s.tls_dir.mkdir(parents=True, exist_ok=True)
    return s


def load(s: Settings) -> x509.Certificate:
    return x509.load_pem_x509_certificate(s.cert_file.read_bytes())


def test_a_leaf_for_server_auth_naming_the_platforms_public_addresses(tmp_path):
    s = settings(tmp_path, PUBLIC_IPADDR="203.0.113.7", RUNPOD_PUBLIC_IP="2001:db8::5")
    assert tls.ensure_certificate(s) == "created"
    cert = load(s)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert {ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::5")} <= set(ips)
    assert tls.ensure_certificate(s) is None  # kept


def test_a_ca_certificate_from_an_older_boot_is_replaced_once(tmp_path):
    s = settings(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, tls.SUBJECT)])
    now = datetime.datetime.now(datetime.UTC)
    old = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    s.cert_file.write_bytes(old.public_bytes(serialization.Encoding.PEM))
    s.key_file.write_text("old key")
    assert "CA" in tls.ensure_certificate(s)
    replaced = s.cert_file.read_bytes()
    assert load(s).extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert tls.ensure_certificate(s) is None and s.cert_file.read_bytes() == replaced


def test_a_new_public_address_gets_a_new_certificate(tmp_path):
    tls.ensure_certificate(settings(tmp_path))
    assert "203.0.113.9" in tls.ensure_certificate(settings(tmp_path, PUBLIC_IPADDR="203.0.113.9"))


def test_a_malformed_public_address_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="PUBLIC_IPADDR 'box.example' is not an IP address"):
        tls.ensure_certificate(settings(tmp_path, PUBLIC_IPADDR="box.example"))


def test_supplied_certificates_are_never_touched(tmp_path):
    s = settings(tmp_path, TLS_CERT=str(tmp_path / "c.pem"), TLS_KEY=str(tmp_path / "k.pem"),
                 PUBLIC_IPADDR="203.0.113.7")
    (tmp_path / "c.pem").write_text("theirs")
    (tmp_path / "k.pem").write_text("theirs")
    assert tls.ensure_certificate(s) is None and (tmp_path / "c.pem").read_text() == "theirs"
