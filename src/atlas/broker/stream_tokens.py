"""Stream tokens: the master's short-lived permission to publish or view one stream.

DESIGN.md §2: "Stream connections to a traffic node are authorised by a short-lived
token signed by the master (asymmetric key; traffic nodes hold only the public key,
received through data sync). A traffic node never relays a stream without a valid token
bound to that session, participant, direction and node."

A token is a JWT (RFC 7519) signed with Ed25519 (``alg: EdDSA``, RFC 8037). Claims:

========== ==========================================================================
``iss``    GUID of the master that issued it
``aud``    GUID of the traffic node it is good for
``sub``    participant id
``sid``    session id
``dir``    ``"publish"`` or ``"subscribe"``
``stream`` stream name, e.g. ``"screen:customer"``
``iat``    issued at (seconds)
``exp``    last moment to *connect* with it (default 60 s after ``iat``); an open
           stream connection outlives it, and to reconnect later the participant asks
           the master for a fresh token (``refresh_grant``, :func:`connect_window`)
``jti``    random token id
========== ==========================================================================

The header carries ``kid`` (the RFC 7638 thumbprint of the public key) so the master can
rotate its key while traffic nodes still accept tokens signed with the previous one, and
``typ: atlas-stream+jwt`` (RFC 8725 §3.11) so no other JWT is ever taken for a stream
token. Only ``EdDSA`` is accepted: a token claiming ``HS256`` (signed with the public key
as an HMAC secret) or ``none`` is refused before any key is touched.

The master keeps its private key in ``DATA_DIR/secrets/stream-signing-key.pem``
(:func:`load_or_create_signer`). Traffic nodes get public keys as PEM
(:meth:`StreamSigner.public_key_pem`, :meth:`StreamKeyring.add_pem`); until data sync
carries them, :func:`save_trusted_keys` / :func:`load_trusted_keys` keep them in
``DATA_DIR/secrets/stream-verify-keys.json``.

Time is passed in (``now``, seconds since the epoch) so every check is testable; PyJWT
checks the signature, the audience and that the claims are present, this module checks
expiry against ``now`` and the claim values.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from atlas.node.datadir import DataDir

ALGORITHM: Final = "EdDSA"
TOKEN_TYPE: Final = "atlas-stream+jwt"  # noqa: S105 - a JWT "typ", not a secret
DEFAULT_TTL: Final = 60.0
MAX_TTL: Final = 600.0
"""Tokens valid for longer than this are refused even when correctly signed."""
CLOCK_SKEW: Final = 5.0
"""Leeway for ``exp`` and for an ``iat`` slightly in the future (node clocks differ)."""
MAX_TOKEN_CHARS: Final = 4096
MAX_CLAIM_CHARS: Final = 256
MAX_KEYS: Final = 4
"""A traffic node trusts at most this many signing keys at once (current + previous)."""

SIGNING_KEY_SECRET: Final = "stream-signing-key.pem"  # noqa: S105 - a file name
TRUSTED_KEYS_SECRET: Final = "stream-verify-keys.json"  # noqa: S105 - a file name

Direction = Literal["publish", "subscribe"]
DIRECTIONS: Final[tuple[Direction, ...]] = ("publish", "subscribe")
_REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "sid", "dir", "stream", "iat", "exp", "jti")


class StreamTokenError(Exception):
    """A token that does not allow this connection; the message says why (for logs and
    for the refused client). ``status`` is the HTTP status to answer with."""

    status = 401


class BadToken(StreamTokenError):
    """Malformed, forged, signed by an unknown key, wrong algorithm or missing claims."""


class TokenExpired(StreamTokenError):
    """The token's connect window is over; ask the master for a new one."""


class WrongNode(StreamTokenError):
    """The token is for another traffic node."""

    status = 403


class WrongSession(StreamTokenError):
    """The token is for another session than the stream asked for."""

    status = 403


class WrongStream(StreamTokenError):
    """The token is for another stream of the session."""

    status = 403


class WrongDirection(StreamTokenError):
    """A subscribe token used to publish, or the other way round."""

    status = 403


@dataclass(frozen=True)
class StreamGrant:
    """What a verified token allows: one direction on one stream of one session."""

    issuer: str
    node_guid: str
    participant: str
    session: str
    direction: Direction
    stream: str
    issued_at: int
    expires_at: int
    token_id: str
    key_id: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an Ed25519 public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)},
                     separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(jwk.encode()).digest())


def public_key_from_pem(pem: bytes) -> Ed25519PublicKey:
    """Load an Ed25519 public key (SubjectPublicKeyInfo PEM); ``ValueError`` otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 public key ({type(key).__name__})")
    return key


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


class StreamSigner:
    """The master's side: holds the private key, issues tokens."""

    def __init__(self, private_key: Ed25519PrivateKey, *, issuer: str) -> None:
        self._key = private_key
        self.issuer = issuer
        self.key_id = key_id(private_key.public_key())

    @classmethod
    def generate(cls, *, issuer: str) -> StreamSigner:
        return cls(Ed25519PrivateKey.generate(), issuer=issuer)

    @classmethod
    def from_pem(cls, pem: bytes, *, issuer: str) -> StreamSigner:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"the stream signing key is not Ed25519 ({type(key).__name__})")
        return cls(key, issuer=issuer)

    def private_key_pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def public_key_pem(self) -> bytes:
        """What traffic nodes need to verify this master's tokens (no secret in it)."""
        return _public_pem(self._key.public_key())

    def issue(
        self,
        *,
        node_guid: str,
        participant: str,
        session: str,
        direction: Direction,
        stream: str,
        now: float,
        ttl: float = DEFAULT_TTL,
        token_id: str | None = None,
    ) -> str:
        """A token letting ``participant`` connect to ``node_guid`` within ``ttl`` seconds
        to ``direction`` the stream ``stream`` of session ``session``."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'publish' or 'subscribe', not {direction!r}")
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl must be in (0, {MAX_TTL:g}] seconds, not {ttl!r}")
        for name, value in (("node_guid", node_guid), ("participant", participant),
                            ("session", session), ("stream", stream)):
            if not value or len(value) > MAX_CLAIM_CHARS:
                raise ValueError(f"{name} must be 1..{MAX_CLAIM_CHARS} characters")
        iat = int(now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": node_guid,
            "sub": participant,
            "sid": session,
            "dir": direction,
            "stream": stream,
            "iat": iat,
            "exp": int(now + ttl),
            "jti": token_id or secrets.token_urlsafe(16),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM,
                          headers={"kid": self.key_id, "typ": TOKEN_TYPE})


class StreamKeyring:
    """The traffic node's side: a small set of trusted public keys, by ``kid``."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for k in keys:
            self.add(k)

    @classmethod
    def from_pems(cls, pems: Iterable[bytes]) -> StreamKeyring:
        return cls(public_key_from_pem(p) for p in pems)

    def add(self, key: Ed25519PublicKey) -> str:
        """Trust ``key``; the oldest key is forgotten beyond :data:`MAX_KEYS`."""
        kid = key_id(key)
        self._keys.pop(kid, None)
        self._keys[kid] = key
        while len(self._keys) > MAX_KEYS:
            del self._keys[next(iter(self._keys))]
        return kid

    def add_pem(self, pem: bytes) -> str:
        return self.add(public_key_from_pem(pem))

    def remove(self, kid: str) -> None:
        self._keys.pop(kid, None)

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def pems(self) -> list[bytes]:
        return [_public_pem(k) for k in self._keys.values()]

    def __len__(self) -> int:
        return len(self._keys)

    def verify(
        self,
        token: str,
        *,
        node_guid: str,
        now: float,
        session: str | None = None,
        stream: str | None = None,
        direction: Direction | None = None,
    ) -> StreamGrant:
        """Check ``token`` for a connection to this node (``node_guid``) at ``now``.

        ``session``, ``stream`` and ``direction``, when given, must match the claims:
        the connection's URL names them, and a token for one stream never opens another.
        """
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise BadToken("the stream token is missing or too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise BadToken(f"the stream token is malformed: {exc}") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise BadToken(f"stream tokens are signed with {ALGORITHM}, not {alg!r}")
        if header.get("typ") != TOKEN_TYPE:
            raise BadToken(f"not a stream token (typ {header.get('typ')!r})")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise BadToken(f"the stream token is signed by an unknown key (kid {kid!r})")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=node_guid,
                options={
                    "require": list(_REQUIRED_CLAIMS),
                    "verify_exp": False,  # checked below against the given ``now``
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise WrongNode(
                f"the stream token is for another traffic node, not {node_guid}"
            ) from None
        except jwt.PyJWTError as exc:
            raise BadToken(f"the stream token is invalid: {exc}") from None
        grant = _grant(claims, kid=cast(str, kid))
        if grant.node_guid != node_guid:  # PyJWT also accepts a list ``aud``
            raise WrongNode(f"the stream token is for another traffic node, not {node_guid}")
        if now > grant.expires_at + CLOCK_SKEW:
            raise TokenExpired(
                f"the stream token expired {now - grant.expires_at:.0f} s ago; "
                "ask the master for a new one"
            )
        if grant.issued_at > now + CLOCK_SKEW:
            raise BadToken("the stream token is issued in the future (clock skew?)")
        if grant.expires_at - grant.issued_at > MAX_TTL:
            raise BadToken(f"the stream token is valid for more than {MAX_TTL:g} s")
        if session is not None and grant.session != session:
            raise WrongSession("the stream token is for another session")
        if stream is not None and grant.stream != stream:
            raise WrongStream(f"the stream token is for stream {grant.stream!r}, not {stream!r}")
        if direction is not None and grant.direction != direction:
            raise WrongDirection(
                f"the stream token allows to {grant.direction}, not to {direction}"
            )
        return grant


def connect_window(token: str) -> float | None:
    """How long ``token`` lets one connect, as issued (``exp`` − ``iat``, seconds), read
    *without* verifying it; ``None`` if it does not say.

    For the client holding the token, not for a node deciding anything: counted from
    when the grant arrived, it tells when to ask the master for a fresh one, whatever
    the difference between the client's clock and the master's.
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    iat, exp = claims.get("iat"), claims.get("exp")
    if (isinstance(iat, bool) or isinstance(exp, bool)
            or not isinstance(iat, int | float) or not isinstance(exp, int | float)):
        return None
    window = float(exp) - float(iat)
    return window if window >= 0 else None


def _grant(claims: Mapping[str, Any], *, kid: str) -> StreamGrant:
    def text(name: str) -> str:
        v = claims.get(name)
        if not isinstance(v, str) or not v or len(v) > MAX_CLAIM_CHARS:
            raise BadToken(f"the stream token's {name!r} claim must be a non-empty string")
        return v

    def seconds(name: str) -> int:
        v = claims.get(name)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise BadToken(f"the stream token's {name!r} claim must be a number")
        return int(v)

    aud = claims.get("aud")
    if not isinstance(aud, str):
        raise BadToken("the stream token's 'aud' claim must be one node GUID")
    direction = text("dir")
    if direction not in DIRECTIONS:
        raise BadToken(f"the stream token's 'dir' claim is {direction!r}, "
                       "not 'publish' or 'subscribe'")
    return StreamGrant(
        issuer=text("iss"),
        node_guid=aud,
        participant=text("sub"),
        session=text("sid"),
        direction=direction,
        stream=text("stream"),
        issued_at=seconds("iat"),
        expires_at=seconds("exp"),
        token_id=text("jti"),
        key_id=kid,
    )


# --- keeping keys in the data directory ----------------------------------------------

def load_or_create_signer(datadir: DataDir, *, issuer: str) -> StreamSigner:
    """The master's signer, from ``secrets/stream-signing-key.pem`` (created if missing)."""
    pem = datadir.read_secret(SIGNING_KEY_SECRET)
    if pem is not None:
        return StreamSigner.from_pem(pem, issuer=issuer)
    signer = StreamSigner.generate(issuer=issuer)
    datadir.write_secret(SIGNING_KEY_SECRET, signer.private_key_pem())
    return signer


def rotate_signer(datadir: DataDir, *, issuer: str) -> StreamSigner:
    """Replace the master's signing key. Traffic nodes must be given the new public key
    (keep the old one in their keyrings until tokens signed with it have expired)."""
    signer = StreamSigner.generate(issuer=issuer)
    datadir.write_secret(SIGNING_KEY_SECRET, signer.private_key_pem())
    return signer


def save_trusted_keys(datadir: DataDir, keyring: StreamKeyring) -> None:
    doc = {"keys": [p.decode() for p in keyring.pems()]}
    datadir.write_secret(TRUSTED_KEYS_SECRET, (json.dumps(doc, indent=2) + "\n").encode())


def load_trusted_keys(datadir: DataDir) -> StreamKeyring:
    """The public keys this node trusts for stream tokens: those saved by
    :func:`save_trusted_keys`, plus this node's own if it holds a signing key."""
    keyring = StreamKeyring()
    raw = datadir.read_secret(TRUSTED_KEYS_SECRET)
    if raw is not None:
        try:
            doc = json.loads(raw)
            pems = [str(p).encode() for p in doc["keys"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{TRUSTED_KEYS_SECRET} is unreadable: {exc}") from None
        for pem in pems:
            keyring.add_pem(pem)
    own = datadir.read_secret(SIGNING_KEY_SECRET)
    if own is not None:
        keyring.add(StreamSigner.from_pem(own, issuer="").public_key())
    return keyring
