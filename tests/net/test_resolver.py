"""The project resolver: system by default, or one given DNS server (real dnsmasq)."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from atlas.net import certs
from atlas.net.resolver import DnsServer, ResolutionError, Resolver
from tests.support.dnsmasq import dnsmasq


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:5353", DnsServer("127.0.0.1", 5353)), ("10.0.0.1", DnsServer("10.0.0.1", 53)),
     ("[::1]:53", DnsServer("::1", 53))],
)
def test_dns_server_parse(text: str, expected: DnsServer) -> None:
    assert DnsServer.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [("dns.example.com:53", "give an IP address"), ("127.0.0.1:0", "between 1 and 65535"),
     ("127.0.0.1:x", "between 1 and 65535"), ("", "give an IP address")],
)
def test_dns_server_parse_refuses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        DnsServer.parse(text)


def test_env_variable_points_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_DNS", "127.0.0.9:5300")
    assert Resolver.from_env().server == DnsServer("127.0.0.9", 5300)
    assert Resolver.from_env("127.0.0.8:53").server == DnsServer("127.0.0.8", 53)
    monkeypatch.delenv("ATLAS_DNS")
    assert Resolver.from_env().server is None


async def test_system_resolver_uses_hosts_file() -> None:
    assert "127.0.0.1" in await Resolver().resolve("localhost")


async def test_ip_literal_passes_through() -> None:
    r = Resolver(DnsServer("127.0.0.1", 9))
    assert await r.resolve("127.0.0.5") == ["127.0.0.5"]


async def test_resolves_through_given_dns_server() -> None:
    with dnsmasq(["--host-record=node1.atlas.test,127.0.0.77",
                  "--host-record=node6.atlas.test,fd00::6"]) as (host, port):
        r = Resolver(DnsServer(host, port))
        assert await r.resolve("node1.atlas.test") == ["127.0.0.77"]
        assert await r.resolve("node6.atlas.test") == ["fd00::6"]
        with pytest.raises(ResolutionError, match="cannot resolve .missing.atlas.test."):
            await r.resolve("missing.atlas.test")


async def test_unreachable_dns_server_is_a_clear_error() -> None:
    r = Resolver(DnsServer("127.0.0.1", 9), timeout=0.3)
    with pytest.raises(ResolutionError, match=r"cannot resolve 'x.atlas.test' via DNS server"):
        await r.resolve("x.atlas.test")


async def test_connection_keeps_hostname_for_tls_and_host_header(tmp_path: Path) -> None:
    """The name comes from DNS, the certificate check and Host header use the name."""
    ca = certs.create_ca()
    pair = certs.issue(ca, ["web.atlas.test"])
    (tmp_path / "c.pem").write_bytes(pair.cert_pem)
    (tmp_path / "k.pem").write_bytes(pair.key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    async def echo_host(request: web.Request) -> web.Response:
        return web.Response(text=request.host)

    app = web.Application()
    app.router.add_get("/", echo_host)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.78", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with dnsmasq(["--host-record=web.atlas.test,127.0.0.78"]) as (host, dport):
            resolver = Resolver(DnsServer(host, dport))
            client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            conn = aiohttp.TCPConnector(resolver=resolver.aiohttp_resolver(), ssl=client_ctx)
            async with aiohttp.ClientSession(connector=conn) as s:
                async with s.get(f"https://web.atlas.test:{port}/") as resp:
                    assert await resp.text() == f"web.atlas.test:{port}"
                # The same server under a name its certificate does not cover is refused.
            with dnsmasq(["--host-record=other.atlas.test,127.0.0.78"]) as (h2, p2):
                conn2 = aiohttp.TCPConnector(
                    resolver=Resolver(DnsServer(h2, p2)).aiohttp_resolver(), ssl=client_ctx
                )
                async with aiohttp.ClientSession(connector=conn2) as s:
                    with pytest.raises(aiohttp.ClientConnectorCertificateError):
                        await s.get(f"https://other.atlas.test:{port}/")
    finally:
        await runner.cleanup()
