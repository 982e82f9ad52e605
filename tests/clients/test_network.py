"""Site addresses and how connection failures read."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from atlas.clients.errors import (
    EXIT_UNREACHABLE,
    CertificateNotTrusted,
    SiteUnreachable,
)
from atlas.clients.network import NetworkSettings, SiteAddress, connect_failure, https_base_of
from atlas.net.resolver import ResolutionError


@pytest.mark.parametrize(("text", "host", "port", "control"), [
    ("https://support.example.com", "support.example.com", 443,
     "wss://support.example.com/client/control"),
    ("support.example.com:8443", "support.example.com", 8443,
     "wss://support.example.com:8443/client/control"),
    ("https://localhost:18443/", "localhost", 18443, "wss://localhost:18443/client/control"),
    ("wss://m1.example:9443/other/path", "m1.example", 9443, "wss://m1.example:9443/other/path"),
    ("https://[::1]:8443", "::1", 8443, "wss://[::1]:8443/client/control"),
])
def test_site_address(text: str, host: str, port: int, control: str) -> None:
    site = SiteAddress.parse(text)
    assert (site.host, site.port) == (host, port)
    assert site.control_url("/client/control") == control


@pytest.mark.parametrize("text", ["http://insecure.example", "https://", "ftp://x", "https://h:99999"])
def test_bad_site_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="site"):
        SiteAddress.parse(text)


def test_https_base_of_a_node_url() -> None:
    assert https_base_of("wss://us-traffic1.example:8443") == "https://us-traffic1.example:8443"
    assert https_base_of("wss://node.example") == "https://node.example"
    assert https_base_of("wss://node.example:443/x") == "https://node.example"


def test_a_bad_source_address_is_refused() -> None:
    with pytest.raises(ValueError):
        NetworkSettings(source_address="not-an-ip")


def test_a_missing_ca_file_is_a_usage_error(tmp_path: object) -> None:
    from pathlib import Path

    settings = NetworkSettings(ca_file=Path("/nonexistent/ca.pem"))
    with pytest.raises(Exception, match="--ca-file") as info:
        settings.ssl_context()
    assert getattr(info.value, "exit_code", None) == 2


def test_failures_read_as_one_line() -> None:
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate in certificate chain"
    failure = connect_failure(cert, "site.example:443")
    assert isinstance(failure, CertificateNotTrusted)
    assert str(failure).startswith("certificate not trusted: pass --ca-file")
    assert failure.exit_code == EXIT_UNREACHABLE

    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 1, True, True, None, None, None),
        ConnectionRefusedError(111, "Connection refused"))
    failure = connect_failure(refused, "h:1")
    assert isinstance(failure, SiteUnreachable) and "connection refused" in str(failure)

    failure = connect_failure(ResolutionError("cannot resolve 'x'"), "x:443")
    assert "cannot reach x:443" in str(failure)
    assert "\n" not in str(connect_failure(TimeoutError(), "slow:443"))
