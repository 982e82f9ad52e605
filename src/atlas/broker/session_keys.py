"""Session keys: how a customer joins a queue (Command API ``generate_session_key``).

A session key is a 7-digit ``short_key`` the representative reads to the customer (or a
``key_url`` to click). It names the queue the session will wait in, is valid for ``ttl``
seconds and can be redeemed once.

Seven digits are only ten million keys, so guessing is what to defend against. The
defence is in three parts, all here:

* keys are drawn uniformly with :mod:`secrets` and kept as 7-character strings (a key
  may start with 0; no digit is more likely than another);
* the store is bounded (:data:`DEFAULT_MAX_KEYS` outstanding keys), so one guess
  succeeds with probability at most ``max_keys / 10**7``;
* wrong keys are rate-limited per source (:class:`RedeemLimiter`): per address and per
  network (/32 and /24 for IPv4; /64 and /48 for IPv6, since one IPv6 host usually has a
  whole /64), a token bucket of tries, and a lockout after repeated wrong keys that
  doubles each time it recurs. One address gets 20 wrong keys before its first 5-minute
  lockout and a few hundred a day at most (the tests measure it).

Pure: the store and the limiter take ``now`` (seconds since the epoch) and hold
everything in memory; randomness is :func:`secrets.randbelow` unless a test injects
another. Errors say whose fault they are: :class:`SessionKeyError` is the customer's
(wrong, used, expired key, or too many tries); :class:`SessionKeyRequestError` the API
caller's (bad ``queue_id`` or ``ttl``); :class:`SessionKeyStoreFull` is ours (capacity).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import ClassVar, Final

from atlas.protocol.control import ErrorCode

__all__ = [
    "DEFAULT_MAX_KEYS",
    "DEFAULT_TTL_SECONDS",
    "EXPIRED_KEY_MEMORY_SECONDS",
    "GENERAL_QUEUE",
    "HOST_POLICY",
    "MAX_TTL_SECONDS",
    "MIN_TTL_SECONDS",
    "NETWORK_POLICY",
    "SHORT_KEY_DIGITS",
    "LimitPolicy",
    "QueueId",
    "QueueKind",
    "RedeemLimiter",
    "RedeemRateLimited",
    "Scope",
    "SessionKey",
    "SessionKeyError",
    "SessionKeyExpired",
    "SessionKeyReply",
    "SessionKeyRequestError",
    "SessionKeyStore",
    "SessionKeyStoreFull",
    "SessionKeyUsed",
    "WrongSessionKey",
    "generate_short_key",
    "normalise_short_key",
    "source_scopes",
    "validate_ttl",
]

SHORT_KEY_DIGITS: Final = 7
_SHORT_KEY_SPACE: Final = 10**SHORT_KEY_DIGITS
MIN_TTL_SECONDS: Final = 60
MAX_TTL_SECONDS: Final = 7 * 86400  # an appointment next week; longer is a standing door
DEFAULT_TTL_SECONDS: Final = 86400
DEFAULT_MAX_KEYS: Final = 10_000  # ≤ 0.1 % of the key space outstanding
EXPIRED_KEY_MEMORY_SECONDS: Final = 3600
"""How long an expired or used key is remembered after its expiry, to tell the customer
"expired" or "already used" rather than "no such key"."""

RandBelow = Callable[[int], int]


def generate_short_key(randbelow: RandBelow = secrets.randbelow) -> str:
    """A uniformly random 7-digit key, leading zeros kept (``"0042137"``)."""
    return f"{randbelow(_SHORT_KEY_SPACE):0{SHORT_KEY_DIGITS}d}"


_SEPARATORS = re.compile(r"[\s\-.]+")
_SHORT_KEY = re.compile(r"[0-9]{7}", re.ASCII)


def normalise_short_key(typed: str) -> str | None:
    """The key as the customer typed it without spaces, hyphens and dots; ``None`` if
    that is not 7 digits."""
    if len(typed) > 64:
        return None
    key = _SEPARATORS.sub("", typed)
    return key if _SHORT_KEY.fullmatch(key) else None


# --- errors ---------------------------------------------------------------------------


class SessionKeyRequestError(ValueError):
    """A ``generate_session_key`` request the API caller got wrong (``field`` says which
    parameter)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class SessionKeyStoreFull(RuntimeError):
    """Too many keys outstanding: ours to fix (capacity), the caller may retry later."""


class SessionKeyError(Exception):
    """A session key was refused; the customer's fault. ``code`` is the control
    protocol's error code, ``message`` the wording for the customer."""

    code: ClassVar[ErrorCode]
    message: ClassVar[str]

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.message)


class WrongSessionKey(SessionKeyError):
    code = ErrorCode.KEY_INVALID
    message = "No such session key: check the 7 digits your representative gave you."


class SessionKeyUsed(SessionKeyError):
    code = ErrorCode.KEY_USED
    message = "This session key has already been used: ask your representative for a new one."


class SessionKeyExpired(SessionKeyError):
    code = ErrorCode.KEY_EXPIRED
    message = "This session key has expired: ask your representative for a new one."


class RedeemRateLimited(SessionKeyError):
    """Too many wrong keys from the source's address or network; no key was checked."""

    code = ErrorCode.RATE_LIMITED
    message = "Too many wrong session keys from your network: try again later."

    def __init__(self, scope: Scope, retry_after_seconds: float, locked: bool) -> None:
        self.scope = scope
        self.retry_after_seconds = max(1, int(retry_after_seconds + 0.999))
        self.locked = locked
        super().__init__(
            f"{self.message} (retry in {self.retry_after_seconds} s; {scope.value} "
            f"{'locked out' if locked else 'rate limit'})"
        )


# --- queues and TTL -------------------------------------------------------------------


class QueueKind(StrEnum):
    GENERAL = "general"
    REP = "rep"  # rep:<numeric id>
    REP_USERNAME = "rep_username"  # rep_username:<username>


_REP_ID = re.compile(r"[1-9][0-9]{0,17}", re.ASCII)
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}", re.ASCII)
_QUEUE_EXPECTED = "expected general, rep:<id> or rep_username:<username>"


@dataclass(frozen=True, slots=True)
class QueueId:
    """The queue a session waits in; ``str()`` gives the Command API form."""

    kind: QueueKind
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> QueueId:
        """``general``, ``rep:12`` or ``rep_username:alice``; else
        :class:`SessionKeyRequestError`."""
        shown = text[:80]
        if text == QueueKind.GENERAL:
            return cls(QueueKind.GENERAL)
        prefix, sep, value = text.partition(":")
        if sep and prefix == QueueKind.REP:
            if _REP_ID.fullmatch(value):
                return cls(QueueKind.REP, value)
            raise SessionKeyRequestError(
                "queue_id", f"{shown!r}: a representative id is a positive number"
            )
        if sep and prefix == QueueKind.REP_USERNAME:
            if _USERNAME.fullmatch(value):
                return cls(QueueKind.REP_USERNAME, value)
            raise SessionKeyRequestError("queue_id", f"{shown!r} is not a valid username")
        raise SessionKeyRequestError("queue_id", f"{shown!r}: {_QUEUE_EXPECTED}")

    def __str__(self) -> str:
        return self.kind.value if self.kind is QueueKind.GENERAL else f"{self.kind}:{self.value}"


GENERAL_QUEUE: Final = QueueId(QueueKind.GENERAL)


def validate_ttl(ttl: int | str | None) -> int:
    """``ttl`` in seconds, :data:`DEFAULT_TTL_SECONDS` when absent; else
    :class:`SessionKeyRequestError`."""
    if ttl is None or ttl == "":
        return DEFAULT_TTL_SECONDS
    if isinstance(ttl, str):
        if not ttl.isascii() or not ttl.isdigit():
            raise SessionKeyRequestError("ttl", f"{ttl[:20]!r} is not a whole number of seconds")
        ttl = int(ttl)
    if isinstance(ttl, bool) or not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
        raise SessionKeyRequestError(
            "ttl", f"{ttl} seconds: expected {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}"
        )
    return ttl


# --- keys -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionKeyReply:
    """The fields the Command API returns for ``generate_session_key``."""

    short_key: str
    key_url: str
    expires: int  # seconds since the epoch
    queue_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionKey:
    short_key: str
    queue_id: QueueId
    created_at: float
    expires_at: float
    created_by: str | None = None
    redeemed_at: float | None = None
    redeemed_by: str | None = None  # source address

    @property
    def ttl(self) -> int:
        return round(self.expires_at - self.created_at)

    @property
    def is_used(self) -> bool:
        return self.redeemed_at is not None

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    def key_url(self, site_hostname: str, port: int = 443) -> str:
        """The link to the key on the support site: its hostname and the port the
        primary master is served on (``:443`` left out)."""
        host = f"[{site_hostname}]" if ":" in site_hostname else site_hostname
        authority = host if port == 443 else f"{host}:{port}"
        return f"https://{authority}/s/{self.short_key}"

    def reply(self, site_hostname: str, port: int = 443) -> SessionKeyReply:
        return SessionKeyReply(
            short_key=self.short_key,
            key_url=self.key_url(site_hostname, port),
            expires=int(self.expires_at),
            queue_id=str(self.queue_id),
        )


# --- rate limiting --------------------------------------------------------------------


class Scope(StrEnum):
    HOST = "address"  # IPv4 /32, IPv6 /64
    NETWORK = "network"  # IPv4 /24, IPv6 /48


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    """Limits for one scope.

    Each wrong key takes a token from a bucket of ``burst`` that refills at
    ``per_minute``; with the bucket empty, tries are refused until a token is back.
    ``lockout_after`` wrong keys lock the scope out for ``lockout_seconds``, doubled for
    each further lockout up to ``max_lockout_seconds``. After ``forget_after_seconds``
    without a wrong key or a lockout, the count and the doubling start over.
    """

    burst: int
    per_minute: float
    lockout_after: int
    lockout_seconds: float
    max_lockout_seconds: float
    forget_after_seconds: float

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per_minute <= 0 or self.lockout_after < 1:
            raise ValueError("burst, per_minute and lockout_after must be positive")


HOST_POLICY: Final = LimitPolicy(
    burst=5, per_minute=5, lockout_after=20, lockout_seconds=300,
    max_lockout_seconds=86400, forget_after_seconds=3600,
)
# A /24 may be an office or a carrier-grade NAT with many honest customers behind it.
NETWORK_POLICY: Final = LimitPolicy(
    burst=30, per_minute=30, lockout_after=100, lockout_seconds=300,
    max_lockout_seconds=86400, forget_after_seconds=3600,
)

_PREFIXES: Final = {(4, Scope.HOST): 32, (4, Scope.NETWORK): 24,
                    (6, Scope.HOST): 64, (6, Scope.NETWORK): 48}


def source_scopes(source_ip: str) -> tuple[tuple[Scope, str], ...]:
    """The networks a source address is limited in (IPv4-mapped IPv6 counts as IPv4)."""
    address = ipaddress.ip_address(source_ip.split("%", 1)[0])  # ValueError: our bug
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return tuple(
        (scope, str(ipaddress.ip_network(f"{address}/{_PREFIXES[address.version, scope]}",
                                         strict=False)))
        for scope in Scope
    )


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    failures: int = 0
    lockouts: int = 0
    locked_until: float = float("-inf")
    last_failure: float = float("-inf")

    def catch_up(self, policy: LimitPolicy, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(policy.burst), self.tokens + elapsed * policy.per_minute / 60)
        self.updated = max(self.updated, now)
        if self.idle(policy, now):
            self.failures = 0
            self.lockouts = 0

    def idle(self, policy: LimitPolicy, now: float) -> bool:
        """Quiet (no wrong key, no lockout) for ``forget_after_seconds``."""
        quiet_since = max(self.last_failure, self.locked_until)
        return now - quiet_since >= policy.forget_after_seconds


class RedeemLimiter:
    """Per-source limits on wrong session keys (pure; ``now`` passed in).

    Memory is bounded: at most ``max_sources`` networks per scope are tracked; beyond
    that the one touched longest ago is forgotten (idle ones are dropped by
    :meth:`purge`).
    """

    def __init__(
        self,
        host: LimitPolicy = HOST_POLICY,
        network: LimitPolicy = NETWORK_POLICY,
        *,
        max_sources: int = 100_000,
    ) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be >= 1")
        self._policies = {Scope.HOST: host, Scope.NETWORK: network}
        self._buckets: dict[Scope, OrderedDict[str, _Bucket]] = {s: OrderedDict() for s in Scope}
        self._max_sources = max_sources

    def check(self, source_ip: str, now: float) -> None:
        """Raise :class:`RedeemRateLimited` if ``source_ip`` may not try a key now."""
        worst: RedeemRateLimited | None = None
        for scope, network in source_scopes(source_ip):
            bucket = self._buckets[scope].get(network)
            if bucket is None:
                continue
            policy = self._policies[scope]
            bucket.catch_up(policy, now)
            if now < bucket.locked_until:
                refusal = RedeemRateLimited(scope, bucket.locked_until - now, locked=True)
            elif bucket.tokens < 1:
                wait = (1 - bucket.tokens) * 60 / policy.per_minute
                refusal = RedeemRateLimited(scope, wait, locked=False)
            else:
                continue
            if worst is None or refusal.retry_after_seconds > worst.retry_after_seconds:
                worst = refusal
        if worst is not None:
            raise worst

    def record_failure(self, source_ip: str, now: float) -> None:
        """Count one wrong key from ``source_ip``."""
        for scope, network in source_scopes(source_ip):
            policy = self._policies[scope]
            bucket = self._bucket(scope, network, now)
            bucket.catch_up(policy, now)
            bucket.tokens = max(0.0, bucket.tokens - 1)
            bucket.failures += 1
            bucket.last_failure = now
            if bucket.failures >= policy.lockout_after:
                seconds = policy.lockout_seconds * 2 ** min(bucket.lockouts, 32)
                bucket.locked_until = now + min(seconds, policy.max_lockout_seconds)
                bucket.lockouts += 1
                bucket.failures = 0

    def retry_after(self, source_ip: str, now: float) -> float:
        """Seconds until ``source_ip`` may try again (0: now)."""
        try:
            self.check(source_ip, now)
        except RedeemRateLimited as refusal:
            return float(refusal.retry_after_seconds)
        return 0.0

    def purge(self, now: float) -> int:
        """Forget networks with nothing to remember; returns how many."""
        dropped = 0
        for scope, buckets in self._buckets.items():
            policy = self._policies[scope]
            for network in [n for n, b in buckets.items() if b.idle(policy, now)]:
                del buckets[network]
                dropped += 1
        return dropped

    def tracked(self, scope: Scope) -> int:
        return len(self._buckets[scope])

    def _bucket(self, scope: Scope, network: str, now: float) -> _Bucket:
        buckets = self._buckets[scope]
        bucket = buckets.get(network)
        if bucket is None:
            if len(buckets) >= self._max_sources:
                buckets.popitem(last=False)
            bucket = buckets[network] = _Bucket(
                tokens=float(self._policies[scope].burst), updated=now
            )
        else:
            buckets.move_to_end(network)
        return bucket


# --- the store ------------------------------------------------------------------------


class SessionKeyStore:
    """The master's outstanding session keys (pure, in memory, ``now`` passed in).

    At most ``max_keys`` keys are held, used and recently expired ones included; a
    key is forgotten :data:`EXPIRED_KEY_MEMORY_SECONDS` after it expires (:meth:`purge`,
    which the adapter calls now and then; :meth:`issue` also purges when full).
    """

    def __init__(
        self,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        limiter: RedeemLimiter | None = None,
        randbelow: RandBelow = secrets.randbelow,
    ) -> None:
        if not 1 <= max_keys <= _SHORT_KEY_SPACE // 10:
            raise ValueError(f"max_keys must be 1 to {_SHORT_KEY_SPACE // 10}")
        self._max_keys = max_keys
        self._keys: dict[str, SessionKey] = {}
        self.limiter = limiter if limiter is not None else RedeemLimiter()
        self._randbelow = randbelow

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[SessionKey]:
        return iter(list(self._keys.values()))

    def get(self, short_key: str) -> SessionKey | None:
        return self._keys.get(short_key)

    def issue(
        self,
        queue_id: QueueId | str,
        now: float,
        ttl: int | str | None = None,
        *,
        created_by: str | None = None,
    ) -> SessionKey:
        """A new key for ``queue_id``, valid ``ttl`` seconds from ``now``.

        :class:`SessionKeyRequestError` for a bad ``queue_id`` or ``ttl``;
        :class:`SessionKeyStoreFull` when ``max_keys`` keys are outstanding.
        """
        queue = queue_id if isinstance(queue_id, QueueId) else QueueId.parse(queue_id)
        seconds = validate_ttl(ttl)
        if len(self._keys) >= self._max_keys:
            self.purge(now, memory_seconds=0)
        if len(self._keys) >= self._max_keys:
            raise SessionKeyStoreFull(
                f"{self._max_keys} session keys are outstanding: try again when some "
                "have been used or have expired"
            )
        for _ in range(100):  # at ≤ 10 % occupancy, 100 collisions in a row: ~1e-100
            short_key = generate_short_key(self._randbelow)
            if short_key not in self._keys:
                break
        else:
            raise RuntimeError("no free session key found (is the random source broken?)")
        key = SessionKey(
            short_key=short_key,
            queue_id=queue,
            created_at=now,
            expires_at=now + seconds,
            created_by=created_by,
        )
        self._keys[short_key] = key
        return key

    def redeem(self, typed_key: str, *, source_ip: str, now: float) -> SessionKey:
        """Use the key the customer typed; it cannot be used again.

        Raises :class:`RedeemRateLimited` before looking at the key when the source is
        limited; :class:`WrongSessionKey`, :class:`SessionKeyUsed` or
        :class:`SessionKeyExpired` otherwise, each counted against the source.
        """
        self.limiter.check(source_ip, now)
        short_key = normalise_short_key(typed_key)
        key = self._keys.get(short_key) if short_key is not None else None
        refusal: SessionKeyError
        if key is None:
            refusal = WrongSessionKey()
        elif key.is_used:
            refusal = SessionKeyUsed()
        elif key.is_expired(now):
            refusal = SessionKeyExpired()
        else:
            used = replace(key, redeemed_at=now, redeemed_by=source_ip)
            self._keys[key.short_key] = used
            return used
        self.limiter.record_failure(source_ip, now)
        raise refusal

    def revoke(self, short_key: str) -> SessionKey | None:
        """Withdraw a key (e.g. its representative cancelled it); returns it if held."""
        return self._keys.pop(short_key, None)

    def purge(self, now: float, *, memory_seconds: float = EXPIRED_KEY_MEMORY_SECONDS) -> int:
        """Forget keys expired more than ``memory_seconds`` ago; returns how many."""
        cutoff = now - memory_seconds
        stale = [k for k, key in self._keys.items() if key.expires_at <= cutoff]
        for short_key in stale:
            del self._keys[short_key]
        return len(stale)

    def outstanding(self, now: float) -> int:
        """Keys that could still be redeemed."""
        return sum(1 for key in self._keys.values() if not key.is_used and now < key.expires_at)
