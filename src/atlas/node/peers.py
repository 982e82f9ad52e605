"""Signed requests from this node to another node's internal address (design section 4).

Guide ("Public vs Internal Hostnames"): all appliance-to-appliance communication uses the
internal address. Every request goes over TLS verified against the node's trust file,
resolves names through the node's resolver, is signed with the cluster PSK
(:mod:`atlas.protocol.signing`), and its answer must be signed too, bound to the
request's nonce. Every call has a timeout.

Failures are typed by whose fault they are and what an operator does about them:
:class:`PeerUnreachable` (network, DNS, TLS, timeout), :class:`PeerPskMismatch`,
:class:`PeerVersionMismatch`, :class:`PeerRejected` (the peer understood and refused,
with its reason code) and :class:`PeerBadResponse` (the peer answered something that is
not a valid signed answer). Our own misuse (no PSK set) is :class:`NoPreSharedKey`.

The PSK is never logged: only the key id of :class:`~atlas.protocol.signing.SigningKey`
could appear in a repr.
"""

from __future__ import annotations

import asyncio
import errno
import json
import secrets
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar, Protocol

import aiohttp
import yarl

from atlas.net.tls import client_context
from atlas.node.runtime import Node
from atlas.protocol.signing import (
    MissingSignature,
    PskMismatch,
    SignatureError,
    SigningKey,
    Verifier,
)

DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024


class HasHostPort(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class NoPreSharedKey(RuntimeError):
    """Our misuse: this node has no Inter-appliance Communication Pre-shared Key."""

    def __init__(self) -> None:
        super().__init__(
            "this node has no Inter-appliance Communication Pre-shared Key: "
            "set it under /login → Management → Security first"
        )


class PeerError(Exception):
    """A request to a peer failed. ``reason`` is a stable code, ``detail`` the why."""

    default_reason: ClassVar[str] = "peer_error"

    def __init__(self, peer: str, detail: str, *, reason: str | None = None) -> None:
        self.peer = peer
        self.detail = detail
        self.reason = reason or self.default_reason
        super().__init__(f"{peer}: {detail}")


class PeerUnreachable(PeerError):
    """No answer: connection refused, timeout, DNS failure, TLS not trusted."""

    default_reason = "unreachable"


class PeerPskMismatch(PeerError):
    """The peer holds another pre-shared key (or none)."""

    default_reason = "psk_mismatch"


class PeerVersionMismatch(PeerError):
    """The peer runs another software version and refused the request."""

    default_reason = "version_mismatch"

    def __init__(self, peer: str, detail: str, *, peer_version: str, our_version: str) -> None:
        self.peer_version = peer_version
        self.our_version = our_version
        super().__init__(peer, detail)


class PeerRejected(PeerError):
    """The peer authenticated the request and refused it; ``reason`` is its code
    (``invalid_document``, ``bad_signature``, ``replayed_request``, …)."""

    default_reason = "rejected"


class PeerBadResponse(PeerError):
    """The answer was not a valid signed JSON answer."""

    default_reason = "bad_response"


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
    errno.EADDRNOTAVAIL: "address not available",
}


def _connector_detail(exc: aiohttp.ClientConnectorError) -> str:
    os_error = exc.os_error
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS handshake failed: {os_error}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS: {os_error.strerror or os_error}"
    if os_error.errno in _ERRNO_WORDS:
        return _ERRNO_WORDS[os_error.errno]
    return os_error.strerror or str(os_error) or type(os_error).__name__


def _error_of(payload: object) -> tuple[str, str, dict[str, Any]]:
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            return str(err.get("reason", "")), str(err.get("message", "")), err
    return "", "", {}


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"answer larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class PeerClient:
    """One pool of verified-TLS connections for signed requests to other nodes.

    Use as ``async with PeerClient(node) as peers: await peers.call(...)``; reuse one
    client for many calls (a data sync, a health monitor's lifetime).
    """

    def __init__(
        self, node: Node, *, timeout: float = DEFAULT_TIMEOUT, limit_per_host: int = 4
    ) -> None:
        psk = node.psk
        if not psk:
            raise NoPreSharedKey()
        self._node = node
        self._key = SigningKey(psk)
        self._verifier = Verifier(self._key, replay_cache_size=1)
        self._sender = node.identity.guid
        self.timeout = timeout
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    @property
    def key_id(self) -> str:
        return self._key.key_id

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=client_context(self._node.trust_file),
                resolver=self._node.resolver.aiohttp_resolver(),
                limit=0,
                limit_per_host=self._limit_per_host,
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def __aenter__(self) -> PeerClient:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def signed_headers(self, method: str, path: str, body: bytes) -> tuple[dict[str, str], str]:
        """Headers signing one request, and its nonce."""
        nonce = secrets.token_urlsafe(16)
        headers = self._key.sign(
            method, path, body, timestamp=int(time.time()), nonce=nonce, sender=self._sender
        )
        return headers, nonce

    async def call(
        self,
        address: HasHostPort,
        method: str,
        path: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        peer: str | None = None,
    ) -> dict[str, Any]:
        """Send a signed request to ``address`` (a node's internal address) and return
        the verified JSON answer; raises a :class:`PeerError` subclass otherwise.

        ``path`` is the raw request target (ASCII, already encoded); ``peer`` names the
        node in errors (default ``host:port``).
        """
        who = peer or f"{address.host}:{address.port}"
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers, nonce = self.signed_headers(method, path, body)
        headers["Content-Type"] = "application/json"
        url = yarl.URL.build(
            scheme="https", host=address.host, port=address.port, path=path, encoded=True
        )
        limit = self.timeout if timeout is None else timeout
        session = self._open()
        try:
            async with asyncio.timeout(limit):
                async with session.request(
                    method, url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    response_headers = response.headers
                    raw = await _read_bounded(response, MAX_RESPONSE_BYTES)
        except TimeoutError:
            raise PeerUnreachable(who, f"no answer within {limit:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise PeerUnreachable(who, _connector_detail(exc)) from None
        except aiohttp.ServerDisconnectedError:
            raise PeerUnreachable(who, "connection closed before an answer") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise PeerUnreachable(who, str(exc) or type(exc).__name__) from None
        except ValueError as exc:
            raise PeerBadResponse(who, str(exc)) from None
        return self._interpret(who, status, response_headers, raw, nonce)

    def _interpret(
        self, who: str, status: int, headers: Mapping[str, str], raw: bytes, nonce: str
    ) -> dict[str, Any]:
        try:
            payload: object = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        reason, message, error = _error_of(payload)
        try:
            self._verifier.verify_response(status, headers, raw, request_nonce=nonce)
        except PskMismatch:
            raise PeerPskMismatch(who, "its pre-shared key differs from ours") from None
        except MissingSignature:
            if reason == "psk_not_set":
                raise PeerPskMismatch(who, "it has no pre-shared key set") from None
            raise PeerBadResponse(who, f"unsigned answer (HTTP {status})") from None
        except SignatureError as exc:
            raise PeerBadResponse(who, f"answer signature refused: {exc}") from None
        if status == 200:
            if not isinstance(payload, dict):
                raise PeerBadResponse(who, "answer is not a JSON object")
            return payload
        if not reason:
            raise PeerBadResponse(who, f"HTTP {status} without an error reason")
        if reason == "psk_mismatch":
            raise PeerPskMismatch(who, message or "pre-shared key mismatch")
        if reason == "version_mismatch":
            raise PeerVersionMismatch(
                who, message, peer_version=str(error.get("version", "?")),
                our_version=self._node.software_version,
            )
        raise PeerRejected(who, message or reason, reason=reason)


__all__ = [
    "DEFAULT_TIMEOUT",
    "NoPreSharedKey",
    "PeerBadResponse",
    "PeerClient",
    "PeerError",
    "PeerPskMismatch",
    "PeerRejected",
    "PeerUnreachable",
    "PeerVersionMismatch",
]
