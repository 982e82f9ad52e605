"""How a client reaches nodes: site address, trusted CA, DNS server, source address.

Every connection a client makes — the control connection to the master, probing a
home node it was directed to, stream connections to traffic nodes — goes out from the
same local address (``--source-address``: the source network the master's prefix rules
and the demo's geo-DNS see, DESIGN.md §9), resolves names through the project resolver
pointed at the same DNS server (``--dns``) and verifies TLS against the same CA
(``--ca-file``). :class:`NetworkSettings` holds those three and builds what aiohttp and
the relay client need from them.

:func:`connect_failure` turns what a failed connection raised into a one-line
:class:`~atlas.clients.errors.ClientFailure`, so an untrusted certificate reads
"certificate not trusted: pass --ca-file" rather than a traceback.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from atlas.clients.errors import CertificateNotTrusted, ClientFailure, SiteUnreachable
from atlas.net.resolver import DnsServer, ResolutionError, Resolver
from atlas.net.tls import client_context

DEFAULT_PORT: Final = 443


@dataclass(frozen=True, slots=True)
class SiteAddress:
    """Where the site (the primary master) is: ``https://host[:port]``, ``wss://…`` or
    ``host[:port]``; a path given with ``wss://`` replaces the control endpoint path."""

    host: str
    port: int = DEFAULT_PORT
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> SiteAddress:
        raw = text.strip()
        if "://" not in raw:
            raw = "https://" + raw
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"site {text!r}: {exc}") from None
        if parts.scheme not in ("https", "wss"):
            raise ValueError(f"site {text!r}: use https://host[:port] (TLS is required)")
        if not parts.hostname:
            raise ValueError(f"site {text!r}: no hostname")
        path = parts.path if parts.scheme == "wss" and parts.path not in ("", "/") else None
        return cls(parts.hostname, port or DEFAULT_PORT, path)

    @classmethod
    def from_url(cls, url: str) -> SiteAddress:
        """A node URL from the master (``wss://host:port/…``) with its path kept."""
        return cls.parse(url)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORT else f"{host}:{self.port}"

    @property
    def https_base(self) -> str:
        return f"https://{self.netloc}"

    def control_url(self, default_path: str) -> str:
        return f"wss://{self.netloc}{self.path or default_path}"

    def __str__(self) -> str:
        return self.netloc


def https_base_of(url: str) -> str:
    """``wss://node:8443/anything`` → ``https://node:8443`` (a node's stream base URL)."""
    return SiteAddress.parse(url.replace("wss://", "https://", 1)).https_base


@dataclass(frozen=True)
class NetworkSettings:
    """What every connection of one client shares."""

    ca_file: Path | None = None
    dns: DnsServer | None = None
    source_address: str | None = None
    dns_timeout: float = 3.0
    tls: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    """A ready TLS client context to use instead of one made from ``ca_file``."""

    def __post_init__(self) -> None:
        if self.source_address is not None:
            ipaddress.ip_address(self.source_address)  # ValueError for a bad one

    def ssl_context(self) -> ssl.SSLContext:
        """One TLS client context (verifying, TLS 1.2+), made once and shared."""
        return self._ssl_context

    @cached_property
    def _ssl_context(self) -> ssl.SSLContext:
        if self.tls is not None:
            return self.tls
        try:
            return client_context(self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ClientFailure("bad_ca_file", f"cannot load --ca-file {self.ca_file}: {exc}",
                                exit_code=2) from None

    def resolver(self) -> Resolver:
        """The project resolver: the ``--dns`` server asked from the source address."""
        return Resolver(self.dns, source_address=self.source_address, timeout=self.dns_timeout)

    @property
    def local_addr(self) -> tuple[str, int] | None:
        return (self.source_address, 0) if self.source_address else None

    def connector(self, *, pinned: tuple[str, str] | None = None,
                  limit: int = 8) -> aiohttp.TCPConnector:
        """A connector bound to the source address, resolving through :meth:`resolver`;
        ``pinned=(hostname, address)`` dials ``address`` for ``hostname`` (TLS still
        checks ``hostname``): an SRV target or an anycast address already resolved."""
        resolver: AbstractResolver = (
            _PinnedResolver(*pinned) if pinned else self.resolver().aiohttp_resolver()
        )
        return aiohttp.TCPConnector(ssl=self.ssl_context(), resolver=resolver,
                                    local_addr=self.local_addr, limit=limit,
                                    enable_cleanup_closed=False)


class _PinnedResolver(AbstractResolver):
    def __init__(self, hostname: str, address: str) -> None:
        self._hostname = hostname
        self._address = address

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host != self._hostname:
            raise OSError(f"{host!r} is not the pinned name {self._hostname!r}")
        fam = socket.AF_INET6 if ":" in self._address else socket.AF_INET
        return [ResolveResult(hostname=host, host=self._address, port=port, family=fam,
                              proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


def connect_failure(exc: BaseException, where: str) -> ClientFailure:
    """The one-line failure for an exception raised while connecting to ``where``."""
    if isinstance(exc, ClientFailure):
        return exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return CertificateNotTrusted(where, _ssl_detail(exc.certificate_error))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CertificateNotTrusted(where, _ssl_detail(exc))
    if isinstance(exc, aiohttp.ClientConnectorSSLError | ssl.SSLError):
        return SiteUnreachable("tls_failed", f"TLS with {where} failed: {exc}")
    if isinstance(exc, ResolutionError):
        return SiteUnreachable("unreachable", f"cannot reach {where}: {exc}")
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return SiteUnreachable(
            "no_control_endpoint",
            f"{where} did not accept the client connection (HTTP {exc.status} {exc.message})"
            " — is this an Atlas site?",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return SiteUnreachable("unreachable", f"cannot reach {where}: {_why(exc.os_error)}")
    if isinstance(exc, TimeoutError):
        return SiteUnreachable("unreachable", f"cannot reach {where}: timed out")
    if isinstance(exc, OSError):
        return SiteUnreachable("unreachable", f"cannot reach {where}: {_why(exc)}")
    if isinstance(exc, aiohttp.ClientError):
        return SiteUnreachable("unreachable", f"cannot reach {where}: {exc or type(exc).__name__}")
    return ClientFailure("failed", f"{where}: {type(exc).__name__}: {exc}")


def _why(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (nothing listens there: is the address right, the site up?)"
    if isinstance(error, TimeoutError):
        return "timed out"
    return error.strerror or str(error) or type(error).__name__


def _ssl_detail(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    return str(exc)
