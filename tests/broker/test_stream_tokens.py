"""Stream tokens (DESIGN.md §2): issue, verify, every refusal, key rotation, storage."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from atlas.broker.stream_tokens import (
    DEFAULT_TTL,
    MAX_KEYS,
    SIGNING_KEY_SECRET,
    TOKEN_TYPE,
    BadToken,
    StreamKeyring,
    StreamSigner,
    TokenExpired,
    WrongDirection,
    WrongNode,
    WrongSession,
    WrongStream,
    connect_window,
    key_id,
    load_or_create_signer,
    load_trusted_keys,
    public_key_from_pem,
    rotate_signer,
    save_trusted_keys,
)
from atlas.node.datadir import DataDir

MASTER = "a" * 32
NODE = "b" * 32
OTHER_NODE = "c" * 32
NOW = 1_700_000_000.0


def issue(signer: StreamSigner, **kw: Any) -> str:
    args: dict[str, Any] = {
        "node_guid": NODE, "participant": "cust-1", "session": "s-1",
        "direction": "publish", "stream": "screen:customer", "now": NOW,
    }
    args.update(kw)
    return signer.issue(**args)


@pytest.fixture
def signer() -> StreamSigner:
    return StreamSigner.generate(issuer=MASTER)


@pytest.fixture
def keyring(signer: StreamSigner) -> StreamKeyring:
    # the traffic node only ever sees the public key, as PEM
    return StreamKeyring.from_pems([signer.public_key_pem()])


def test_issue_and_verify(signer: StreamSigner, keyring: StreamKeyring) -> None:
    token = issue(signer)
    g = keyring.verify(token, node_guid=NODE, now=NOW + 1, session="s-1",
                       stream="screen:customer", direction="publish")
    assert (g.issuer, g.node_guid, g.participant, g.session, g.direction, g.stream) == (
        MASTER, NODE, "cust-1", "s-1", "publish", "screen:customer")
    assert g.expires_at - g.issued_at == DEFAULT_TTL
    assert g.key_id == signer.key_id and len(g.token_id) >= 16
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": signer.key_id, "typ": TOKEN_TYPE}
    assert b"PRIVATE" not in signer.public_key_pem()


def test_token_ids_are_unique(signer: StreamSigner, keyring: StreamKeyring) -> None:
    ids = {keyring.verify(issue(signer), node_guid=NODE, now=NOW).token_id for _ in range(20)}
    assert len(ids) == 20


def test_expired_token_refused_but_clock_skew_tolerated(
    signer: StreamSigner, keyring: StreamKeyring
) -> None:
    token = issue(signer, ttl=60)
    keyring.verify(token, node_guid=NODE, now=NOW + 60 + 4)  # within the skew
    with pytest.raises(TokenExpired, match="expired") as info:
        keyring.verify(token, node_guid=NODE, now=NOW + 66)
    assert info.value.status == 401
    with pytest.raises(BadToken, match="in the future"):
        keyring.verify(token, node_guid=NODE, now=NOW - 30)


def test_wrong_node_refused(signer: StreamSigner, keyring: StreamKeyring) -> None:
    with pytest.raises(WrongNode, match="another traffic node") as info:
        keyring.verify(issue(signer), node_guid=OTHER_NODE, now=NOW)
    assert info.value.status == 403


def test_wrong_session_stream_direction_refused(
    signer: StreamSigner, keyring: StreamKeyring
) -> None:
    token = issue(signer, direction="subscribe")
    with pytest.raises(WrongSession):
        keyring.verify(token, node_guid=NODE, now=NOW, session="s-2")
    with pytest.raises(WrongStream, match="screen:rep"):
        keyring.verify(token, node_guid=NODE, now=NOW, stream="screen:rep")
    with pytest.raises(WrongDirection, match="allows to subscribe, not to publish"):
        keyring.verify(token, node_guid=NODE, now=NOW, direction="publish")


def test_forged_tokens_refused(signer: StreamSigner, keyring: StreamKeyring) -> None:
    other = StreamSigner.generate(issuer=MASTER)
    with pytest.raises(BadToken, match="unknown key"):
        keyring.verify(issue(other), node_guid=NODE, now=NOW)
    # the attacker's key claims the trusted kid: the signature check catches it
    forged = jwt.encode(
        jwt.decode(issue(other), options={"verify_signature": False}),
        other._key, algorithm="EdDSA", headers={"kid": signer.key_id, "typ": TOKEN_TYPE},
    )
    with pytest.raises(BadToken, match="Signature verification failed"):
        keyring.verify(forged, node_guid=NODE, now=NOW)
    # a claim changed after signing
    h, p, s = issue(signer).split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims["dir"] = "subscribe"
    p2 = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(BadToken, match="Signature verification failed"):
        keyring.verify(f"{h}.{p2}.{s}", node_guid=NODE, now=NOW)
    for junk in ("", "abc", "a.b.c", "x" * 5000):
        with pytest.raises(BadToken):
            keyring.verify(junk, node_guid=NODE, now=NOW)


def test_algorithm_confusion_refused(signer: StreamSigner, keyring: StreamKeyring) -> None:
    claims = jwt.decode(issue(signer), options={"verify_signature": False})
    headers = {"kid": signer.key_id, "typ": TOKEN_TYPE}
    # HS256 keyed with the (public!) verification key
    hs = jwt.encode(claims, "not-the-key-but-it-does-not-matter-32b", algorithm="HS256",
                    headers=headers)
    with pytest.raises(BadToken, match="not 'HS256'"):
        keyring.verify(hs, node_guid=NODE, now=NOW)
    unsigned = jwt.encode(claims, None, algorithm="none", headers=headers)
    with pytest.raises(BadToken, match="not 'none'"):
        keyring.verify(unsigned, node_guid=NODE, now=NOW)
    es = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                    headers=headers)
    with pytest.raises(BadToken, match="not 'ES256'"):
        keyring.verify(es, node_guid=NODE, now=NOW)


def test_other_jwts_are_not_stream_tokens(signer: StreamSigner,
                                          keyring: StreamKeyring) -> None:
    claims = jwt.decode(issue(signer), options={"verify_signature": False})
    plain = jwt.encode(claims, signer._key, algorithm="EdDSA", headers={"kid": signer.key_id})
    with pytest.raises(BadToken, match="not a stream token"):
        keyring.verify(plain, node_guid=NODE, now=NOW)


def _signed(signer: StreamSigner, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, signer._key, algorithm="EdDSA",
                      headers={"kid": signer.key_id, "typ": TOKEN_TYPE})


@pytest.mark.parametrize("missing", ["iss", "aud", "sub", "sid", "dir", "stream", "iat",
                                     "exp", "jti"])
def test_missing_claims_refused(signer: StreamSigner, keyring: StreamKeyring,
                                missing: str) -> None:
    claims = jwt.decode(issue(signer), options={"verify_signature": False})
    del claims[missing]
    with pytest.raises((BadToken, WrongNode)):
        keyring.verify(_signed(signer, claims), node_guid=NODE, now=NOW)


@pytest.mark.parametrize(
    ("claim", "value", "message"),
    [
        ("dir", "both", "'dir' claim is 'both'"),
        ("dir", 1, "'dir' claim must be a non-empty string"),
        ("sid", "", "'sid' claim must be a non-empty string"),
        ("stream", ["a"], "'stream' claim must be a non-empty string"),
        ("aud", [NODE, OTHER_NODE], "one node GUID"),
        ("exp", NOW + 3600, "more than 600 s"),
    ],
)
def test_bad_claim_values_refused(signer: StreamSigner, keyring: StreamKeyring, claim: str,
                                  value: Any, message: str) -> None:
    claims = jwt.decode(issue(signer), options={"verify_signature": False})
    claims[claim] = value
    with pytest.raises(BadToken, match=message):
        keyring.verify(_signed(signer, claims), node_guid=NODE, now=NOW)


def test_issue_refuses_nonsense(signer: StreamSigner) -> None:
    with pytest.raises(ValueError, match="direction"):
        issue(signer, direction="both")
    with pytest.raises(ValueError, match="ttl"):
        issue(signer, ttl=3600)
    with pytest.raises(ValueError, match="session"):
        issue(signer, session="")


def test_key_rotation(tmp_path: Path) -> None:
    dd = DataDir(tmp_path)
    old = load_or_create_signer(dd, issuer=MASTER)
    assert load_or_create_signer(dd, issuer=MASTER).key_id == old.key_id  # kept
    assert (dd.secrets_dir / SIGNING_KEY_SECRET).stat().st_mode & 0o077 == 0
    keyring = StreamKeyring.from_pems([old.public_key_pem()])
    old_token = issue(old)
    new = rotate_signer(dd, issuer=MASTER)
    assert new.key_id != old.key_id
    assert load_or_create_signer(dd, issuer=MASTER).key_id == new.key_id
    with pytest.raises(BadToken, match="unknown key"):
        keyring.verify(issue(new), node_guid=NODE, now=NOW)
    keyring.add_pem(new.public_key_pem())  # data sync brings the new key
    keyring.verify(issue(new), node_guid=NODE, now=NOW)
    keyring.verify(old_token, node_guid=NODE, now=NOW)  # still valid until it expires
    keyring.remove(old.key_id)
    with pytest.raises(BadToken, match="unknown key"):
        keyring.verify(old_token, node_guid=NODE, now=NOW)


def test_keyring_keeps_a_small_set() -> None:
    signers = [StreamSigner.generate(issuer=MASTER) for _ in range(MAX_KEYS + 2)]
    ring = StreamKeyring(s.public_key() for s in signers)
    assert ring.key_ids == [s.key_id for s in signers[-MAX_KEYS:]]


def test_trusted_keys_saved_and_loaded(tmp_path: Path) -> None:
    traffic = DataDir(tmp_path / "traffic")
    assert len(load_trusted_keys(traffic)) == 0
    master = StreamSigner.generate(issuer=MASTER)
    save_trusted_keys(traffic, StreamKeyring.from_pems([master.public_key_pem()]))
    assert load_trusted_keys(traffic).key_ids == [master.key_id]
    # a master trusts its own key without being told
    mdd = DataDir(tmp_path / "master")
    own = load_or_create_signer(mdd, issuer=MASTER)
    assert load_trusted_keys(mdd).key_ids == [own.key_id]


def test_public_key_import_checks_the_type() -> None:
    with pytest.raises(ValueError, match="not a PEM public key"):
        public_key_from_pem(b"junk")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        public_key_from_pem(ec_pem)


def test_key_id_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: thumbprint of the example Ed25519 key
    x = base64.urlsafe_b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    assert key_id(Ed25519PublicKey.from_public_bytes(x)) == (
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    )


def test_real_clock_round_trip(signer: StreamSigner, keyring: StreamKeyring) -> None:
    now = time.time()
    keyring.verify(issue(signer, now=now), node_guid=NODE, now=now)


def test_connect_window_is_read_without_trusting_the_token() -> None:
    """The client's hint for when to ask for a fresh grant: ``exp - iat``, whatever the
    clocks; a forged or odd token gives a number or nothing, never an exception."""
    signer = StreamSigner.generate(issuer=MASTER)
    token = signer.issue(node_guid=NODE, participant="p", session="s", direction="publish",
                         stream="screen:customer", now=time.time() - 3600, ttl=120)
    assert connect_window(token) == 120.0  # long expired: still says how long it was
    hmac_key = "k" * 32  # anyone's: these tokens are not the master's
    forged = jwt.encode({"iat": 10, "exp": 70}, hmac_key, algorithm="HS256")
    assert connect_window(forged) == 60.0  # nothing is trusted; only the client reads it
    for odd in ("", "x", "a.b.c", "x" * 10_000,
                jwt.encode({"iat": 10}, hmac_key, algorithm="HS256"),
                jwt.encode({"iat": 100, "exp": 10}, hmac_key, algorithm="HS256"),
                jwt.encode({"iat": True, "exp": 10}, hmac_key, algorithm="HS256"),
                jwt.encode({"iat": "10", "exp": 70}, hmac_key, algorithm="HS256")):
        assert connect_window(odd) is None, odd
