"""The local CA and the certificates it issues."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from atlas.net import certs


def test_issue_wildcard_covers_site_and_nodes() -> None:
    ca = certs.create_ca()
    pair = certs.issue(ca, ["*.support.example.test", "support.example.test"])
    cert = certs.check_pair(pair.cert_pem, pair.key_pem, "us-traffic1.support.example.test")
    assert certs.covers(cert, "support.example.test")
    assert certs.covers(cert, "MASTER1.support.example.test.")
    assert not certs.covers(cert, "a.b.support.example.test")  # one label only (RFC 6125)
    assert not certs.covers(cert, "example.test")


def test_issued_cert_verifies_against_ca(tmp_path: Path) -> None:
    ca = certs.create_ca()
    pair = certs.issue(ca, ["node.example.test"])
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "c.pem").write_bytes(pair.cert_pem)
    (tmp_path / "k.pem").write_bytes(pair.key_pem)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    cin, cout, sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(cin, cout, server_hostname="node.example.test")
    s = server.wrap_bio(sin, sout, server_side=True)
    for _ in range(10):
        for obj in (c, s):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        sin.write(cout.read())
        cin.write(sout.read())
    c.do_handshake()
    assert c.version() in ("TLSv1.3", "TLSv1.2")


def test_mismatched_key_refused() -> None:
    ca = certs.create_ca()
    a = certs.issue(ca, ["a.example.test"])
    b = certs.issue(ca, ["b.example.test"])
    with pytest.raises(certs.CertificateError, match="does not match the private key"):
        certs.check_pair(a.cert_pem, b.key_pem)


def test_name_not_covered_refused() -> None:
    ca = certs.create_ca()
    a = certs.issue(ca, ["a.example.test"])
    with pytest.raises(certs.CertificateError, match="does not cover 'b.example.test'"):
        certs.check_pair(a.cert_pem, a.key_pem, "b.example.test")


@pytest.mark.parametrize("cert_pem", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_garbage_certificate_refused(cert_pem: bytes) -> None:
    ca = certs.create_ca()
    a = certs.issue(ca, ["a.example.test"])
    with pytest.raises(certs.CertificateError, match="not a PEM X.509 certificate"):
        certs.check_pair(cert_pem, a.key_pem)


def test_ca_dir_refuses_overwrite_and_keeps_key_private(tmp_path: Path) -> None:
    certs.create_ca_dir(tmp_path / "ca")
    assert (tmp_path / "ca" / certs.CA_KEY).stat().st_mode & 0o077 == 0
    before = (tmp_path / "ca" / certs.CA_CERT).read_bytes()
    with pytest.raises(certs.CertificateError, match="refusing to overwrite"):
        certs.create_ca_dir(tmp_path / "ca")
    assert (tmp_path / "ca" / certs.CA_CERT).read_bytes() == before
    loaded = certs.load_ca_dir(tmp_path / "ca")
    assert x509.load_pem_x509_certificate(loaded.cert_pem).subject


def test_load_missing_ca_dir(tmp_path: Path) -> None:
    with pytest.raises(certs.CertificateError, match="cannot read the CA"):
        certs.load_ca_dir(tmp_path / "nope")
