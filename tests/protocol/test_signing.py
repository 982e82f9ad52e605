"""Inter-node request signing (DESIGN.md §4): golden vectors, round trips, every refusal."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, replace

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from atlas.protocol.signing import (
    KEY_ID_HEADER,
    NONCE_HEADER,
    REQUEST_HEADERS,
    RESPONSE_HEADERS,
    SENDER_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BadSignature,
    MalformedSignature,
    MissingSignature,
    PskMismatch,
    ReplayCache,
    ReplayedRequest,
    SignatureError,
    SigningKey,
    StaleRequest,
    VerifiedRequest,
    VerifiedResponse,
    Verifier,
)

PSK = "correct horse battery staple"
NONCE = "AAECAwQFBgcICQoLDA0ODw"  # bytes 0..15, unpadded url-safe base64
SENDER = "6f1c2b9e-4d3a-4e8b-9a57-0c1d2e3f4a5b"
TS = 1_700_000_000
METHOD = "POST"
PATH = "/internal/v1/sync?dry_run=1"
BODY = b'{"revision": 42}'
RESPONSE_BODY = b'{"revision": 42, "applied": true}'

# Golden values, computed once and hard-coded: any change to key derivation or to the
# canonical strings breaks compatibility between node versions and must show up here.
GOLDEN_DERIVED_KEY = "514dea2825781ddd496f709c639d045d3b82e0cf81ba489c57111898bd910622"
GOLDEN_KEY_ID = "760cf7b1"
GOLDEN_CANONICAL = (
    "ATLAS1\nPOST\n/internal/v1/sync?dry_run=1\n1700000000\nAAECAwQFBgcICQoLDA0ODw\n"
    "6f1c2b9e-4d3a-4e8b-9a57-0c1d2e3f4a5b\n"
    "1993ca0d21d06a55309079136a4015bb4980098529d0aafe8381123c2f4ecbfc"
)
GOLDEN_HEADERS = {
    "X-Atlas-Timestamp": "1700000000",
    "X-Atlas-Nonce": "AAECAwQFBgcICQoLDA0ODw",
    "X-Atlas-Key-Id": "760cf7b1",
    "X-Atlas-Signature": "3OXcGlCfzPQmC1n11LiQ2gpx6bBV7uX3bwDHYC_Z9B8",
    "X-Atlas-Sender": "6f1c2b9e-4d3a-4e8b-9a57-0c1d2e3f4a5b",
}
GOLDEN_RESPONSE_HEADERS = {
    "X-Atlas-Timestamp": "1700000001",
    "X-Atlas-Key-Id": "760cf7b1",
    "X-Atlas-Signature": "goCoXq0amqWXyuhUXmFWj2y8VzIZ7jd5KURORplvP44",
}


def nonce(i: int) -> str:
    return base64.urlsafe_b64encode(i.to_bytes(16, "big")).rstrip(b"=").decode()


@pytest.fixture
def key() -> SigningKey:
    return SigningKey(PSK)


@pytest.fixture
def verifier(key: SigningKey) -> Verifier:
    return Verifier(key)


@pytest.fixture
def headers(key: SigningKey) -> dict[str, str]:
    return key.sign(METHOD, PATH, BODY, timestamp=TS, nonce=NONCE, sender=SENDER)


def verify(verifier: Verifier, headers: Mapping[str, str], *, method: str = METHOD,
           path: str = PATH, body: bytes = BODY, now: float = TS) -> VerifiedRequest:
    return verifier.verify(method, path, headers, body, now=now)


# --- golden vectors -------------------------------------------------------------------


def test_golden_request_headers(headers: dict[str, str]) -> None:
    assert headers == GOLDEN_HEADERS


def test_golden_response_headers(key: SigningKey) -> None:
    got = key.sign_response(200, RESPONSE_BODY, request_nonce=NONCE, timestamp=TS + 1)
    assert got == GOLDEN_RESPONSE_HEADERS


def test_golden_values_follow_the_documented_construction() -> None:
    """Recompute the golden signature from the spec alone, without the module."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"atlas inter-node v1"
    ).derive(PSK.encode())
    assert derived.hex() == GOLDEN_DERIVED_KEY
    assert hmac.new(derived, b"key-id", hashlib.sha256).hexdigest()[:8] == GOLDEN_KEY_ID
    canonical = (
        f"ATLAS1\n{METHOD}\n{PATH}\n{TS}\n{NONCE}\n{SENDER}\n{hashlib.sha256(BODY).hexdigest()}"
    )
    assert canonical == GOLDEN_CANONICAL
    mac = hmac.new(derived, canonical.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(mac).rstrip(b"=").decode() == GOLDEN_HEADERS[
        "X-Atlas-Signature"
    ]


def test_key_id_is_not_the_psk_or_derived_key(key: SigningKey) -> None:
    assert key.key_id == GOLDEN_KEY_ID
    assert SigningKey("another psk").key_id != key.key_id


def test_method_is_signed_uppercased(key: SigningKey) -> None:
    lower = key.sign("post", PATH, BODY, timestamp=TS, nonce=NONCE, sender=SENDER)
    assert lower == GOLDEN_HEADERS


# --- the PSK never shows ----------------------------------------------------------------


def test_repr_does_not_leak_the_psk(key: SigningKey, verifier: Verifier) -> None:
    for text in (repr(key), str(key), repr(verifier), str(verifier)):
        assert PSK not in text
        assert GOLDEN_DERIVED_KEY not in text
        assert GOLDEN_KEY_ID in text
    assert not hasattr(key, "__dict__")


def test_psk_not_in_headers_or_errors(key: SigningKey, headers: dict[str, str]) -> None:
    other = Verifier(SigningKey("another psk"))
    with pytest.raises(PskMismatch) as info:
        verify(other, headers)
    assert PSK not in str(info.value)
    assert "another psk" not in str(info.value)
    assert all(PSK not in v and GOLDEN_DERIVED_KEY not in v for v in headers.values())


def test_psk_must_not_be_empty() -> None:
    with pytest.raises(ValueError):
        SigningKey("")


# --- round trips ------------------------------------------------------------------------


def test_round_trip(verifier: Verifier, headers: dict[str, str]) -> None:
    assert verify(verifier, headers, now=TS + 0.5) == VerifiedRequest(
        sender=SENDER, timestamp=TS, nonce=NONCE, skew=0.5
    )


def test_round_trip_empty_body_and_get(key: SigningKey, verifier: Verifier) -> None:
    signed = key.sign("GET", "/internal/v1/health", b"", timestamp=TS, nonce=NONCE, sender=SENDER)
    got = verifier.verify("GET", "/internal/v1/health", signed, b"", now=TS)
    assert got.sender == SENDER


def test_header_lookup_is_case_insensitive(verifier: Verifier, headers: dict[str, str]) -> None:
    mixed = {k.lower() if i % 2 else k.upper(): v for i, (k, v) in enumerate(headers.items())}
    mixed["Content-Type"] = "application/json"
    assert verify(verifier, mixed).sender == SENDER


def test_padded_nonce_is_accepted(key: SigningKey, verifier: Verifier) -> None:
    padded = base64.urlsafe_b64encode(bytes(range(16))).decode()
    assert padded.endswith("==")
    signed = key.sign(METHOD, PATH, BODY, timestamp=TS, nonce=padded, sender=SENDER)
    assert verify(verifier, signed).nonce == padded


def test_response_round_trip(key: SigningKey, verifier: Verifier) -> None:
    signed = key.sign_response(200, RESPONSE_BODY, request_nonce=NONCE, timestamp=TS + 1)
    lower = {k.lower(): v for k, v in signed.items()}
    got = verifier.verify_response(200, lower, RESPONSE_BODY, request_nonce=NONCE)
    assert got == VerifiedResponse(status=200, timestamp=TS + 1, request_nonce=NONCE)


# --- refusals: requests -------------------------------------------------------------------


@pytest.mark.parametrize("name", REQUEST_HEADERS)
def test_missing_header(verifier: Verifier, headers: dict[str, str], name: str) -> None:
    del headers[name]
    with pytest.raises(MissingSignature) as info:
        verify(verifier, headers)
    assert name in str(info.value)
    assert info.value.reason == "missing_signature"


def test_unsigned_request(verifier: Verifier) -> None:
    with pytest.raises(MissingSignature):
        verify(verifier, {"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (SIGNATURE_HEADER, "not base64!"),
        (SIGNATURE_HEADER, "3OXcGlCfzPQmC1n11LiQ2gpx6bBV7uX3bwDHYC_Z9B"),  # truncated
        (SIGNATURE_HEADER, "3OXcGlCfzPQmC1n11LiQ2gpx6bBV7uX3bwDHYC_Z9B8A"),  # 33 bytes
        (SIGNATURE_HEADER, base64.b64encode(b"\xfb" * 32).decode()),  # standard alphabet
        (SIGNATURE_HEADER, ""),
        (NONCE_HEADER, "AAECAwQFBgcICQoLDA0O"),  # 15 bytes
        (NONCE_HEADER, "AAECAwQFBgcICQoLDA0ODw+/"),
        (NONCE_HEADER, "A" * 200),
        (NONCE_HEADER, "AAECAwQFBgcICQoLDA0ODw="),  # wrong padding
        (TIMESTAMP_HEADER, "1700000000.5"),
        (TIMESTAMP_HEADER, "-1700000000"),
        (TIMESTAMP_HEADER, "+1700000000"),
        (TIMESTAMP_HEADER, " 1700000000"),
        (TIMESTAMP_HEADER, "01700000000"),
        (TIMESTAMP_HEADER, "1_700_000_000"),
        (TIMESTAMP_HEADER, "١٧٠٠٠٠٠٠٠٠"),  # Arabic-Indic digits, which int() accepts
        (TIMESTAMP_HEADER, ""),
        (KEY_ID_HEADER, "760CF7B1"),
        (KEY_ID_HEADER, "760cf7b"),
        (KEY_ID_HEADER, "ünicode!"),
        (SENDER_HEADER, ""),
        (SENDER_HEADER, "node one"),
        (SENDER_HEADER, "x" * 129),
    ],
)
def test_malformed_header(
    verifier: Verifier, headers: dict[str, str], name: str, value: str
) -> None:
    headers[name] = value
    with pytest.raises(MalformedSignature) as info:
        verify(verifier, headers)
    assert info.value.reason == "malformed_signature"


def test_duplicate_header_is_malformed(verifier: Verifier, headers: dict[str, str]) -> None:
    headers[SIGNATURE_HEADER.lower()] = headers[SIGNATURE_HEADER]
    with pytest.raises(MalformedSignature):
        verify(verifier, headers)


def test_wrong_psk_is_psk_mismatch(headers: dict[str, str]) -> None:
    with pytest.raises(PskMismatch) as info:
        verify(Verifier(SigningKey(PSK + " ")), headers)
    assert info.value.reason == "psk_mismatch"
    assert info.value.message == "pre-shared key mismatch"
    assert info.value.claimed_sender == SENDER


def test_key_id_forged_to_match_is_bad_signature(verifier: Verifier) -> None:
    forged = SigningKey("another psk").sign(
        METHOD, PATH, BODY, timestamp=TS, nonce=NONCE, sender=SENDER
    )
    forged[KEY_ID_HEADER] = GOLDEN_KEY_ID
    with pytest.raises(BadSignature):
        verify(verifier, forged)


def test_one_body_byte_changed(verifier: Verifier, headers: dict[str, str]) -> None:
    body = bytearray(BODY)
    body[-2] ^= 0x01
    with pytest.raises(BadSignature) as info:
        verify(verifier, headers, body=bytes(body))
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", PATH),
        ("GET", PATH),
        (METHOD, "/internal/v1/sync"),  # query dropped
        (METHOD, "/internal/v1/sync?dry_run=0"),
        (METHOD, "/internal/v1/sync?dry_run=1&x=1"),
        (METHOD, "/internal/v1/SYNC?dry_run=1"),
        (METHOD, "/internal/v1/sync/?dry_run=1"),
        (METHOD, "/internal/v1/%73ync?dry_run=1"),  # same resource, other raw target
    ],
)
def test_method_or_path_changed(
    verifier: Verifier, headers: dict[str, str], method: str, path: str
) -> None:
    with pytest.raises(BadSignature):
        verify(verifier, headers, method=method, path=path)


def test_sender_changed(verifier: Verifier, headers: dict[str, str]) -> None:
    headers[SENDER_HEADER] = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(BadSignature):
        verify(verifier, headers)


def test_timestamp_changed_within_skew(verifier: Verifier, headers: dict[str, str]) -> None:
    headers[TIMESTAMP_HEADER] = str(TS + 1)
    with pytest.raises(BadSignature):
        verify(verifier, headers)


def test_malformed_received_target(verifier: Verifier, headers: dict[str, str]) -> None:
    with pytest.raises(MalformedSignature):
        verify(verifier, headers, path="/internal/v1/sync\nX")


@pytest.mark.parametrize("skew", [61, -61, 3600, -3600])
def test_stale_request(verifier: Verifier, headers: dict[str, str], skew: int) -> None:
    with pytest.raises(StaleRequest) as info:
        verify(verifier, headers, now=TS + skew)
    assert info.value.skew == skew
    assert info.value.max_skew == 60
    assert info.value.reason == "stale_request"
    assert f"{abs(skew)} s {'behind' if skew > 0 else 'ahead of'}" in str(info.value)
    assert NONCE not in verifier.replay_cache


@pytest.mark.parametrize("skew", [60, -60, 60.0])
def test_edge_of_skew_window_is_accepted(
    verifier: Verifier, headers: dict[str, str], skew: float
) -> None:
    assert verify(verifier, headers, now=TS + skew).skew == skew


def test_custom_skew(key: SigningKey, headers: dict[str, str]) -> None:
    with pytest.raises(StaleRequest):
        verify(Verifier(key, max_skew=5), headers, now=TS + 6)
    assert verify(Verifier(key, max_skew=5), headers, now=TS + 5).skew == 5


def test_replayed_request(verifier: Verifier, headers: dict[str, str]) -> None:
    verify(verifier, headers)
    with pytest.raises(ReplayedRequest) as info:
        verify(verifier, headers, now=TS + 30)
    assert info.value.reason == "replayed_request"
    assert info.value.claimed_sender == SENDER


def test_same_nonce_other_request_is_replayed(key: SigningKey, verifier: Verifier) -> None:
    verify(verifier, key.sign(METHOD, PATH, BODY, timestamp=TS, nonce=NONCE, sender=SENDER))
    again = key.sign("GET", "/x", b"", timestamp=TS + 1, nonce=NONCE, sender="other-node")
    with pytest.raises(ReplayedRequest):
        verifier.verify("GET", "/x", again, b"", now=TS + 1)


def test_replay_after_window_is_refused_by_timestamp(
    key: SigningKey, verifier: Verifier, headers: dict[str, str]
) -> None:
    verify(verifier, headers)
    # Other traffic after the window lets the cache forget the nonce ...
    later = key.sign(METHOD, PATH, BODY, timestamp=TS + 61, nonce=nonce(1), sender=SENDER)
    verify(verifier, later, now=TS + 61)
    assert NONCE not in verifier.replay_cache
    # ... and the timestamp alone still refuses the replay.
    with pytest.raises(StaleRequest):
        verify(verifier, headers, now=TS + 61)


def test_refused_requests_do_not_consume_the_nonce(
    verifier: Verifier, headers: dict[str, str]
) -> None:
    forged = dict(headers, **{SIGNATURE_HEADER: "A" * 43})
    with pytest.raises(BadSignature):
        verify(verifier, forged)
    with pytest.raises(StaleRequest):
        verify(verifier, headers, now=TS + 100)
    assert len(verifier.replay_cache) == 0
    verify(verifier, headers)


def test_all_errors_are_signature_errors_with_reason() -> None:
    classes: list[type[SignatureError]] = [
        MissingSignature, MalformedSignature, PskMismatch, BadSignature,
        StaleRequest, ReplayedRequest,
    ]
    reasons = {cls.reason for cls in classes}
    assert len(reasons) == len(classes)
    assert all(cls.message for cls in classes)
    assert {cls.reason for cls in classes} >= {"psk_mismatch", "stale_request"}


# --- our own misuse raises ValueError, not a SignatureError ---------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": "short"},
        {"nonce": "AAECAwQFBgcICQoLDA0O"},
        {"timestamp": 1.5},
        {"timestamp": True},
        {"timestamp": -1},
        {"sender": ""},
        {"sender": "a\nb"},
        {"method": "GET POST"},
        {"method": ""},
        {"path": "internal/v1/sync"},
        {"path": "/a\nb"},
        {"path": "/ä"},
    ],
)
def test_sign_refuses_misuse(key: SigningKey, change: dict[str, object]) -> None:
    args: dict[str, object] = dict(method=METHOD, path=PATH, body=BODY, timestamp=TS,
                                   nonce=NONCE, sender=SENDER)
    args.update(change)
    with pytest.raises(ValueError):
        key.sign(**args)  # type: ignore[arg-type]


def test_verifier_arguments() -> None:
    with pytest.raises(ValueError):
        Verifier(SigningKey(PSK), max_skew=-1)
    with pytest.raises(ValueError):
        Verifier(SigningKey(PSK), replay_cache_size=0)


# --- refusals: responses ----------------------------------------------------------------------


@pytest.fixture
def response_headers(key: SigningKey) -> dict[str, str]:
    return key.sign_response(200, RESPONSE_BODY, request_nonce=NONCE, timestamp=TS + 1)


def verify_response(verifier: Verifier, headers: Mapping[str, str], *, status: int = 200,
                    body: bytes = RESPONSE_BODY, request_nonce: str = NONCE) -> VerifiedResponse:
    return verifier.verify_response(status, headers, body, request_nonce=request_nonce)


def test_response_to_another_request_is_refused(
    verifier: Verifier, response_headers: dict[str, str]
) -> None:
    with pytest.raises(BadSignature):
        verify_response(verifier, response_headers, request_nonce=nonce(1))


@pytest.mark.parametrize(("status", "body"), [(500, RESPONSE_BODY), (200, b"{}")])
def test_response_altered(
    verifier: Verifier, response_headers: dict[str, str], status: int, body: bytes
) -> None:
    with pytest.raises(BadSignature):
        verify_response(verifier, response_headers, status=status, body=body)


@pytest.mark.parametrize("name", RESPONSE_HEADERS)
def test_response_missing_header(
    verifier: Verifier, response_headers: dict[str, str], name: str
) -> None:
    del response_headers[name]
    with pytest.raises(MissingSignature):
        verify_response(verifier, response_headers)


def test_response_psk_mismatch(response_headers: dict[str, str]) -> None:
    with pytest.raises(PskMismatch):
        verify_response(Verifier(SigningKey("another psk")), response_headers)


def test_response_malformed(verifier: Verifier, response_headers: dict[str, str]) -> None:
    response_headers[TIMESTAMP_HEADER] = "soon"
    with pytest.raises(MalformedSignature):
        verify_response(verifier, response_headers)


def test_response_with_bad_status_is_malformed(
    verifier: Verifier, response_headers: dict[str, str]
) -> None:
    with pytest.raises(MalformedSignature):
        verify_response(verifier, response_headers, status=999)


def test_response_check_with_bad_request_nonce_is_our_misuse(
    verifier: Verifier, response_headers: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        verify_response(verifier, response_headers, request_nonce="short")


def test_request_signature_is_not_a_response_signature(
    key: SigningKey, verifier: Verifier
) -> None:
    """Domain separation: request and response MACs never stand in for each other."""
    request = key.sign("GET", "/", b"", timestamp=TS, nonce=NONCE, sender=SENDER)
    with pytest.raises(BadSignature):
        verifier.verify_response(200, request, b"", request_nonce=NONCE)


# --- replay cache -----------------------------------------------------------------------------


def test_replay_cache_stays_bounded() -> None:
    cache = ReplayCache(100)
    for i in range(1000):
        assert cache.add(nonce(i), expires_at=10_000 + i, now=0)
        assert len(cache) <= 100
    assert len(cache) == 100
    assert nonce(999) in cache and nonce(899) not in cache  # oldest evicted first


def test_verifier_replay_cache_stays_bounded(key: SigningKey) -> None:
    verifier = Verifier(key, replay_cache_size=50)
    for i in range(500):
        signed = key.sign("GET", "/", b"", timestamp=TS, nonce=nonce(i), sender=SENDER)
        verifier.verify("GET", "/", signed, b"", now=TS)
        assert len(verifier.replay_cache) <= 50


def test_replay_cache_evicts_expired() -> None:
    cache = ReplayCache(10)
    cache.add(nonce(1), expires_at=100, now=0)
    cache.add(nonce(2), expires_at=200, now=0)
    assert not cache.add(nonce(1), expires_at=100, now=100)  # still inside the window
    cache.add(nonce(3), expires_at=300, now=150)
    assert nonce(1) not in cache and nonce(2) in cache and len(cache) == 2


# --- property: any mutation fails verification ------------------------------------------------

methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
paths = st.from_regex(r"/[\x21-\x7e]{0,40}", fullmatch=True)
bodies = st.binary(max_size=256)
timestamps = st.integers(min_value=0, max_value=10**11)
nonces = st.binary(min_size=16, max_size=32).map(
    lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
)
senders = st.from_regex(r"[\x21-\x7e]{1,64}", fullmatch=True)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes
    timestamp: int
    nonce: str
    sender: str

    def sign(self, key: SigningKey) -> dict[str, str]:
        return key.sign(self.method, self.path, self.body, timestamp=self.timestamp,
                        nonce=self.nonce, sender=self.sender)

    def verify(self, verifier: Verifier, headers: Mapping[str, str]) -> VerifiedRequest:
        return verifier.verify(self.method, self.path, headers, self.body, now=self.timestamp)


requests = st.builds(Request, methods, paths, bodies, timestamps, nonces, senders)
FIELDS = ["method", "path", "body", "timestamp", "nonce", "sender"]


@given(original=requests, other=requests, field=st.sampled_from(FIELDS))
def test_any_mutation_fails_verification(original: Request, other: Request, field: str) -> None:
    """Change one field in transit (headers follow the change): the MAC must not match."""
    assume(getattr(other, field) != getattr(original, field))
    received = replace(original, **{field: getattr(other, field)})
    key = SigningKey(PSK)
    verifier = Verifier(key)
    signed = original.sign(key)
    headers = dict(signed, **{
        TIMESTAMP_HEADER: str(received.timestamp),
        NONCE_HEADER: received.nonce,
        SENDER_HEADER: received.sender,
    })
    with pytest.raises(BadSignature):
        received.verify(verifier, headers)
    # The unmutated request still verifies: the refusal came from the mutation.
    assert original.verify(verifier, signed).sender == original.sender


@given(status=st.integers(100, 599), body=bodies, request_nonce=nonces, ts=timestamps)
def test_response_round_trip_property(
    status: int, body: bytes, request_nonce: str, ts: int
) -> None:
    key = SigningKey(PSK)
    signed = key.sign_response(status, body, request_nonce=request_nonce, timestamp=ts)
    got = Verifier(key).verify_response(status, signed, body, request_nonce=request_nonce)
    assert (got.status, got.timestamp) == (status, ts)
