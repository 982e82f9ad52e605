"""Certificates: a local CA and the node/wildcard certificates it issues.

Uses the ``cryptography`` package. The guide recommends one wildcard certificate covering
the support site and every node hostname; ``issue`` accepts several names, wildcards too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"


class CertificateError(ValueError):
    """A certificate or key that cannot be used, with the reason."""


@dataclass(frozen=True)
class CertPair:
    cert_pem: bytes
    key_pem: bytes


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable only by this user (mode 0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def create_ca(common_name: str = "Atlas local CA", days: int = 3650) -> CertPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def create_ca_dir(ca_dir: Path, common_name: str = "Atlas local CA") -> CertPair:
    """Create ``ca.pem`` and ``ca-key.pem`` in ``ca_dir``; refuse to overwrite."""
    if (ca_dir / CA_CERT).exists() or (ca_dir / CA_KEY).exists():
        raise CertificateError(f"{ca_dir} already holds a CA; refusing to overwrite it")
    pair = create_ca(common_name)
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / CA_CERT).write_bytes(pair.cert_pem)
    write_private(ca_dir / CA_KEY, pair.key_pem)
    return pair


def load_ca_dir(ca_dir: Path) -> CertPair:
    try:
        return CertPair((ca_dir / CA_CERT).read_bytes(), (ca_dir / CA_KEY).read_bytes())
    except OSError as exc:
        raise CertificateError(f"cannot read the CA in {ca_dir}: {exc.strerror}") from exc


def issue(ca: CertPair, names: list[str], days: int = 825) -> CertPair:
    """Issue a server certificate for ``names`` (DNS names, wildcards, or IP literals)."""
    if not names:
        raise CertificateError("a certificate needs at least one name")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key is not an EC key")
    signer: CertificateIssuerPrivateKeyTypes = ca_key
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def check_pair(cert_pem: bytes, key_pem: bytes, hostname: str | None = None) -> x509.Certificate:
    """Check that the certificate parses, matches the key, and (optionally) covers a name."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertificateError(f"the certificate is not a PEM X.509 certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"the key is not an unencrypted PEM private key: {exc}") from exc
    pub = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cert_pub = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if pub != cert_pub:
        raise CertificateError("the certificate does not match the private key")
    if hostname is not None and not covers(cert, hostname):
        raise CertificateError(
            f"the certificate does not cover {hostname!r} (it names: {', '.join(names_of(cert))})"
        )
    return cert


def names_of(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = list(san.get_values_for_type(x509.DNSName))
    out += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return out


def covers(cert: x509.Certificate, hostname: str) -> bool:
    """RFC 6125 matching: exact name, or a single-label ``*.`` wildcard."""
    host = hostname.lower().rstrip(".")
    for name in names_of(cert):
        n = name.lower().rstrip(".")
        if n == host:
            return True
        if n.startswith("*.") and "." in host:
            if host.split(".", 1)[1] == n[2:]:
                return True
    return False
