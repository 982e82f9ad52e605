"""The one resolver every outgoing hostname lookup in Atlas goes through.

By default it asks the system (``getaddrinfo``: /etc/hosts, then the system's DNS). Pointed
at a DNS server (``host:port``, from a node setting, the ``--dns`` option or the
``ATLAS_DNS`` environment variable) it asks only that server, with dnspython, and can
send its queries from a given source address so a DNS server sees the client's network
(design section 9: the demo's geo-DNS answers per client network).

Connections made through :meth:`Resolver.aiohttp_resolver` keep the hostname for TLS
verification (SNI, certificate name) and the ``Host`` header; only the IP address is
looked up here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult

ENV_VAR = "ATLAS_DNS"


class ResolutionError(OSError):
    """A name that could not be resolved, with the reason."""


@dataclass(frozen=True)
class DnsServer:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> DnsServer:
        t = text.strip()
        host, sep, port = t.rpartition(":")
        if not sep:
            host, port = t, "53"
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise ValueError(f"DNS server {text!r}: give an IP address, as ip[:port]") from exc
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"DNS server {text!r}: the port must be between 1 and 65535")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Resolver:
    """Resolve hostnames to addresses, through the system or one given DNS server."""

    def __init__(
        self,
        server: DnsServer | None = None,
        *,
        source_address: str | None = None,
        timeout: float = 3.0,
    ) -> None:
        self.server = server
        self.source_address = source_address
        self.timeout = timeout
        self._dns: dns.asyncresolver.Resolver | None = None
        if server is not None:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [server.host]
            r.port = server.port
            r.timeout = timeout
            r.lifetime = timeout
            self._dns = r

    @classmethod
    def from_env(cls, explicit: str | None = None, **kw: object) -> Resolver:
        """``explicit`` (an option) wins over ``ATLAS_DNS``; neither → the system resolver."""
        text = explicit or os.environ.get(ENV_VAR)
        server = DnsServer.parse(text) if text else None
        return cls(server, **kw)  # type: ignore[arg-type]

    @property
    def dns_resolver(self) -> dns.asyncresolver.Resolver:
        """A dnspython resolver for record types beyond A/AAAA (SRV)."""
        if self._dns is not None:
            return self._dns
        return dns.asyncresolver.Resolver(configure=True)

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[str]:
        """Return the IP addresses of ``host`` (an IP literal is returned as it is)."""
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        if self._dns is None:
            return await self._system(host, port, family)
        addresses: list[str] = []
        kinds = []
        if family in (socket.AF_UNSPEC, socket.AF_INET):
            kinds.append(dns.rdatatype.A)
        if family in (socket.AF_UNSPEC, socket.AF_INET6):
            kinds.append(dns.rdatatype.AAAA)
        errors: list[str] = []
        for rdtype in kinds:
            try:
                answer = await self._dns.resolve(
                    host, rdtype, source=self.source_address, search=False
                )
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                errors.append(str(exc) or type(exc).__name__)
                continue
            addresses += [r.to_text() for r in answer]
        if not addresses:
            why = "; ".join(errors) if errors else "no A/AAAA record"
            raise ResolutionError(f"cannot resolve {host!r} via DNS server {self.server}: {why}")
        return addresses

    async def _system(self, host: str, port: int, family: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM),
                self.timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise ResolutionError(f"cannot resolve {host!r}: {exc}") from exc
        seen: list[str] = []
        for _fam, _t, _p, _c, sockaddr in infos:
            addr = str(sockaddr[0])
            if addr not in seen:
                seen.append(addr)
        return seen

    def aiohttp_resolver(self) -> AbstractResolver:
        """An aiohttp resolver: TLS and ``Host`` keep the name, only the IP comes from here."""
        return _AiohttpAdapter(self)


class _AiohttpAdapter(AbstractResolver):
    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        out: list[ResolveResult] = []
        for addr in await self._resolver.resolve(host, port, family):
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            out.append(
                ResolveResult(
                    hostname=host, host=addr, port=port, family=fam, proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        return out

    async def close(self) -> None:
        return None
