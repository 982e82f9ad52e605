"""Inter-node request signing with the cluster PSK (DESIGN.md §4).

Every node-to-node request carries an HMAC-SHA256 over its method, request target
(path and query string), timestamp, nonce, sender GUID and body digest. The receiver
refuses requests that are unsigned, signed with another PSK, tampered with, outside the
allowed clock skew, or replayed. Answers are signed too and bound to the request's nonce,
so an old answer cannot be passed off as the answer to a new request.

The PSK never crosses the wire: the MAC key is derived from it with HKDF-SHA256
(RFC 5869), and only a short key id derived from that key is sent, so a receiver can tell
"PSK mismatch" (key ids differ) apart from "tampered request" (key ids equal, MAC wrong).

This module is pure: no sockets, no clock, no randomness. Callers pass ``now`` and the
nonce (``secrets.token_urlsafe(16)``). Adapters must sign and verify the request target
exactly as sent on the wire (aiohttp server: ``request.raw_path``; aiohttp client: pass a
``yarl.URL(..., encoded=True)`` so it is not re-encoded).

Errors say whose fault they are: a :class:`SignatureError` is the peer's (or an
attacker's); our own misuse (a short nonce, a newline in a path) raises ``ValueError``.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TIMESTAMP_HEADER: Final = "X-Atlas-Timestamp"
NONCE_HEADER: Final = "X-Atlas-Nonce"
KEY_ID_HEADER: Final = "X-Atlas-Key-Id"
SIGNATURE_HEADER: Final = "X-Atlas-Signature"
SENDER_HEADER: Final = "X-Atlas-Sender"

REQUEST_HEADERS: Final = (
    TIMESTAMP_HEADER, NONCE_HEADER, KEY_ID_HEADER, SIGNATURE_HEADER, SENDER_HEADER,
)
RESPONSE_HEADERS: Final = (TIMESTAMP_HEADER, KEY_ID_HEADER, SIGNATURE_HEADER)

HKDF_INFO: Final = b"atlas inter-node v1"
MIN_NONCE_BYTES: Final = 16
MAX_NONCE_CHARS: Final = 128
MAX_SENDER_CHARS: Final = 128

_REQUEST_PREFIX: Final = "ATLAS1\n"
# A different prefix keeps a response MAC from ever being accepted as a request MAC.
_RESPONSE_PREFIX: Final = "ATLAS1-RESPONSE\n"
_MAC_BYTES: Final = hashlib.sha256().digest_size

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)  # RFC 9110 §5.6.2
_REQUEST_TARGET = re.compile(r"/[\x21-\x7e]*", re.ASCII)  # origin-form, raw (RFC 9112 §3.2.1)
_VISIBLE = re.compile(r"[\x21-\x7e]+", re.ASCII)
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,11}", re.ASCII)
_KEY_ID = re.compile(r"[0-9a-f]{8}", re.ASCII)
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}", re.ASCII)


# --- errors: the peer's fault -------------------------------------------------------


class SignatureError(Exception):
    """A signed message from a peer was refused; the peer's (or an attacker's) fault.

    ``reason`` is a stable code for the API and status history; ``message`` is the human
    wording. ``claimed_sender`` is the ``X-Atlas-Sender`` header when it could be read;
    it is only authenticated if the MAC matched (i.e. for stale and replayed requests).
    """

    reason: ClassVar[str] = "signature_error"
    message: ClassVar[str] = "signature refused"

    def __init__(self, detail: str = "", *, claimed_sender: str | None = None) -> None:
        self.detail = detail
        self.claimed_sender = claimed_sender
        super().__init__(f"{self.message}: {detail}" if detail else self.message)


class MissingSignature(SignatureError):
    reason = "missing_signature"
    message = "message is not signed"


class MalformedSignature(SignatureError):
    reason = "malformed_signature"
    message = "malformed signature headers"


class PskMismatch(SignatureError):
    reason = "psk_mismatch"
    message = "pre-shared key mismatch"


class BadSignature(SignatureError):
    reason = "bad_signature"
    message = "signature does not match (message altered in transit?)"


class StaleRequest(SignatureError):
    """The timestamp is outside the allowed skew; ``skew`` is local clock minus it."""

    reason = "stale_request"
    message = "request timestamp outside the allowed clock skew"

    def __init__(
        self, skew: float, max_skew: int, *, claimed_sender: str | None = None
    ) -> None:
        self.skew = skew
        self.max_skew = max_skew
        where = "behind" if skew > 0 else "ahead of"
        super().__init__(
            f"timestamp is {abs(skew):.0f} s {where} our clock (allowed ±{max_skew} s)",
            claimed_sender=claimed_sender,
        )


class ReplayedRequest(SignatureError):
    reason = "replayed_request"
    message = "request replayed (nonce already seen)"


# --- results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """An authenticated request: who sent it, and how far its clock is from ours."""

    sender: str
    timestamp: int
    nonce: str
    skew: float  # local clock minus the request timestamp, in seconds


@dataclass(frozen=True, slots=True)
class VerifiedResponse:
    """An authenticated answer to the request with ``request_nonce``.

    Freshness comes from the request nonce, so the timestamp is reported, not enforced:
    callers may compare it with their clock to show a peer's clock drift.
    """

    status: int
    timestamp: int
    request_nonce: str


# --- canonical strings --------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Decode url-safe base64 with or without padding (RFC 4648 §5); None if invalid."""
    if not _B64URL.fullmatch(text):
        return None
    bare = text.rstrip("=")
    if len(bare) % 4 == 1 or (bare != text and len(text) % 4 != 0):
        return None
    return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))


def _check_nonce(nonce: str) -> None:
    raw = _b64url_decode(nonce) if len(nonce) <= MAX_NONCE_CHARS else None
    if raw is None or len(raw) < MIN_NONCE_BYTES:
        raise ValueError(
            f"nonce must be url-safe base64 of at least {MIN_NONCE_BYTES} bytes "
            f"and at most {MAX_NONCE_CHARS} characters"
        )


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise ValueError("timestamp must be integer unix seconds")
    if not _TIMESTAMP.fullmatch(str(timestamp)):
        raise ValueError(f"timestamp out of range: {timestamp}")


def _canonical_request(
    method: str, path: str, body: bytes, timestamp: int, nonce: str, sender: str
) -> bytes:
    """The signed string; raises ValueError on any field that could blur its framing."""
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"invalid HTTP method: {method!r}")
    if not _REQUEST_TARGET.fullmatch(path):
        raise ValueError(f"path must be a raw origin-form request target: {path!r}")
    if not _VISIBLE.fullmatch(sender) or len(sender) > MAX_SENDER_CHARS:
        raise ValueError(f"invalid sender: {sender!r}")
    _check_timestamp(timestamp)
    _check_nonce(nonce)
    return (
        f"{_REQUEST_PREFIX}{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{sender}\n"
        f"{hashlib.sha256(body).hexdigest()}"
    ).encode("ascii")


def _canonical_response(status: int, body: bytes, request_nonce: str, timestamp: int) -> bytes:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"invalid HTTP status: {status!r}")
    _check_timestamp(timestamp)
    _check_nonce(request_nonce)
    return (
        f"{_RESPONSE_PREFIX}{status}\n{request_nonce}\n{timestamp}\n"
        f"{hashlib.sha256(body).hexdigest()}"
    ).encode("ascii")


# --- key ----------------------------------------------------------------------------


class SigningKey:
    """The MAC key derived from the cluster PSK (HKDF-SHA256, info ``atlas inter-node v1``).

    The PSK itself is not kept; ``repr`` shows only the non-secret key id.
    """

    __slots__ = ("_key", "_key_id")

    def __init__(self, psk: str) -> None:
        if not isinstance(psk, str) or not psk:
            raise ValueError("PSK must be a non-empty string")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO)
        self._key = hkdf.derive(psk.encode("utf-8"))
        self._key_id = hmac.new(self._key, b"key-id", hashlib.sha256).hexdigest()[:8]

    @property
    def key_id(self) -> str:
        """Eight hex characters naming the key; sent on the wire, not secret."""
        return self._key_id

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self._key_id!r})"

    def _mac(self, canonical: bytes) -> bytes:
        return hmac.new(self._key, canonical, hashlib.sha256).digest()

    def sign(
        self, method: str, path: str, body: bytes, *, timestamp: int, nonce: str, sender: str
    ) -> dict[str, str]:
        """Headers to add to a request. ``path`` includes the query string, as sent."""
        canonical = _canonical_request(method, path, body, timestamp, nonce, sender)
        return {
            TIMESTAMP_HEADER: str(timestamp),
            NONCE_HEADER: nonce,
            KEY_ID_HEADER: self._key_id,
            SIGNATURE_HEADER: _b64url(self._mac(canonical)),
            SENDER_HEADER: sender,
        }

    def sign_response(
        self, status: int, body: bytes, *, request_nonce: str, timestamp: int
    ) -> dict[str, str]:
        """Headers to add to the answer to the request that carried ``request_nonce``."""
        canonical = _canonical_response(status, body, request_nonce, timestamp)
        return {
            TIMESTAMP_HEADER: str(timestamp),
            KEY_ID_HEADER: self._key_id,
            SIGNATURE_HEADER: _b64url(self._mac(canonical)),
        }


# --- replay cache -------------------------------------------------------------------


class ReplayCache:
    """Nonces of accepted requests, each kept until its timestamp leaves the skew window.

    After that the timestamp check refuses a replay by itself, so the window bounds the
    memory needed: about (request rate × 2 × max_skew) entries. If the cache is still
    full, the entry closest to expiry is evicted rather than refusing new requests: only
    holders of the PSK can add entries (nonces are remembered only after the MAC
    matched), so refusing would let a busy or faulty peer lock the whole cluster out,
    while eviction only reopens a replay window for that one nonce until it goes stale.
    Size ``capacity`` above the expected peak so that never happens.
    """

    __slots__ = ("_capacity", "_expiry", "_heap")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("replay cache capacity must be at least 1")
        self._capacity = capacity
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._expiry

    def add(self, nonce: str, expires_at: float, *, now: float) -> bool:
        """Remember ``nonce`` until ``expires_at``; False if it is already remembered."""
        self._expire(now)
        if nonce in self._expiry:
            return False
        while len(self._expiry) >= self._capacity:
            self._pop()
        self._expiry[nonce] = expires_at
        heapq.heappush(self._heap, (expires_at, nonce))
        return True

    def _expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            self._pop()

    def _pop(self) -> None:
        _, nonce = heapq.heappop(self._heap)
        del self._expiry[nonce]


# --- verifier -----------------------------------------------------------------------


def _signature_headers(
    headers: Mapping[str, str], names: Iterable[str], claimed_sender: bool
) -> dict[str, str]:
    """Pick ``names`` from ``headers`` case-insensitively (RFC 9110 §5.1).

    Works for plain dicts and multidicts; a name present twice is ambiguous and refused.
    """
    wanted = {name.lower(): name for name in names}
    found: dict[str, str] = {}
    for key, value in headers.items():
        name = wanted.get(key.lower())
        if name is None:
            continue
        if name in found:
            raise MalformedSignature(f"{name} header given more than once")
        found[name] = value
    missing = [name for name in wanted.values() if name not in found]
    if missing:
        sender = found.get(SENDER_HEADER) if claimed_sender else None
        raise MissingSignature(f"no {', '.join(missing)} header", claimed_sender=sender)
    return found


def _parse_timestamp(text: str, sender: str | None) -> int:
    if not _TIMESTAMP.fullmatch(text):
        raise MalformedSignature(f"{TIMESTAMP_HEADER} is not unix seconds", claimed_sender=sender)
    return int(text)


def _parse_signature(found: Mapping[str, str], sender: str | None) -> bytes:
    if not _KEY_ID.fullmatch(found[KEY_ID_HEADER]):
        raise MalformedSignature(f"{KEY_ID_HEADER} is not 8 hex digits", claimed_sender=sender)
    mac = _b64url_decode(found[SIGNATURE_HEADER])
    if mac is None or len(mac) != _MAC_BYTES:
        raise MalformedSignature(
            f"{SIGNATURE_HEADER} is not a base64url HMAC-SHA256", claimed_sender=sender
        )
    return mac


class Verifier:
    """Checks signed requests and responses from peers holding the same PSK.

    Order of checks: headers present and well-formed, key id (PSK mismatch), MAC
    (tampering), then clock skew and replay. Skew is judged only on an authenticated
    timestamp, so a ``StaleRequest`` reliably means a peer's clock is off; a nonce is
    remembered only once the whole request is accepted, so forgeries cannot fill the
    replay cache.
    """

    __slots__ = ("_key", "_max_skew", "replay_cache")

    def __init__(
        self, key: SigningKey, max_skew: int = 60, replay_cache_size: int = 100_000
    ) -> None:
        if max_skew < 0:
            raise ValueError("max_skew must not be negative")
        self._key = key
        self._max_skew = max_skew
        self.replay_cache = ReplayCache(replay_cache_size)

    @property
    def key(self) -> SigningKey:
        return self._key

    @property
    def max_skew(self) -> int:
        return self._max_skew

    def __repr__(self) -> str:
        return (
            f"Verifier(key={self._key!r}, max_skew={self._max_skew}, "
            f"replay_cache_size={self.replay_cache.capacity})"
        )

    def _check_mac(
        self, found: Mapping[str, str], canonical: bytes, mac: bytes, sender: str | None
    ) -> None:
        if not hmac.compare_digest(found[KEY_ID_HEADER], self._key.key_id):
            raise PskMismatch(
                f"peer key id {found[KEY_ID_HEADER]}, ours {self._key.key_id}",
                claimed_sender=sender,
            )
        if not hmac.compare_digest(mac, self._key._mac(canonical)):
            raise BadSignature(claimed_sender=sender)

    def verify(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> VerifiedRequest:
        """Authenticate a request, or raise the :class:`SignatureError` that says why not.

        ``path`` is the raw request target with its query string, as received.
        """
        found = _signature_headers(headers, REQUEST_HEADERS, claimed_sender=True)
        sender = found[SENDER_HEADER]
        timestamp = _parse_timestamp(found[TIMESTAMP_HEADER], sender)
        mac = _parse_signature(found, sender)
        nonce = found[NONCE_HEADER]
        try:
            canonical = _canonical_request(method, path, body, timestamp, nonce, sender)
        except ValueError as exc:
            raise MalformedSignature(str(exc), claimed_sender=sender) from None
        self._check_mac(found, canonical, mac, sender)
        skew = now - timestamp
        if abs(skew) > self._max_skew:
            raise StaleRequest(skew, self._max_skew, claimed_sender=sender)
        if not self.replay_cache.add(nonce, timestamp + self._max_skew, now=now):
            raise ReplayedRequest(f"nonce {nonce}", claimed_sender=sender)
        return VerifiedRequest(sender=sender, timestamp=timestamp, nonce=nonce, skew=skew)

    def verify_response(
        self, status: int, headers: Mapping[str, str], body: bytes, *, request_nonce: str
    ) -> VerifiedResponse:
        """Authenticate the answer to our request that carried ``request_nonce``.

        No ``now``: the nonce we just generated makes the answer fresh, and a replayed
        older answer is bound to another nonce and fails the MAC.
        """
        _check_nonce(request_nonce)  # ours: a bad one is our misuse, not the peer's
        found = _signature_headers(headers, RESPONSE_HEADERS, claimed_sender=False)
        timestamp = _parse_timestamp(found[TIMESTAMP_HEADER], None)
        mac = _parse_signature(found, None)
        try:
            canonical = _canonical_response(status, body, request_nonce, timestamp)
        except ValueError as exc:
            raise MalformedSignature(str(exc)) from None
        self._check_mac(found, canonical, mac, None)
        return VerifiedResponse(status=status, timestamp=timestamp, request_nonce=request_nonce)
