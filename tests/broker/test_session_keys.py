"""Session keys: generation, validation, single use, expiry, bounded store, and the
per-source limits that keep 7-digit keys from being guessed."""

from __future__ import annotations

import itertools
import secrets
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.broker.session_keys import (
    DEFAULT_MAX_KEYS,
    DEFAULT_TTL_SECONDS,
    EXPIRED_KEY_MEMORY_SECONDS,
    GENERAL_QUEUE,
    HOST_POLICY,
    MAX_TTL_SECONDS,
    MIN_TTL_SECONDS,
    NETWORK_POLICY,
    LimitPolicy,
    QueueId,
    QueueKind,
    RedeemLimiter,
    RedeemRateLimited,
    Scope,
    SessionKeyExpired,
    SessionKeyReply,
    SessionKeyRequestError,
    SessionKeyStore,
    SessionKeyStoreFull,
    SessionKeyUsed,
    WrongSessionKey,
    generate_short_key,
    normalise_short_key,
    source_scopes,
    validate_ttl,
)
from atlas.protocol.control import ErrorCode

T0 = 1_700_000_000.0
SITE = "support.example.com"
CUSTOMER = "198.51.100.23"
ATTACKER = "203.0.113.9"


# --- generation -----------------------------------------------------------------------


def test_short_keys_are_seven_digit_strings_leading_zeros_kept() -> None:
    bounds: list[int] = []

    def randbelow(bound: int) -> int:
        bounds.append(bound)
        return 42

    assert generate_short_key(randbelow) == "0000042"
    assert bounds == [10_000_000]  # the whole key space, nothing more
    assert generate_short_key(lambda _: 0) == "0000000"
    assert generate_short_key(lambda b: b - 1) == "9999999"
    for _ in range(1000):
        key = generate_short_key()
        assert len(key) == 7 and key.isdigit()


def test_short_keys_are_uniform() -> None:
    """Chi-squared per digit position over 70,000 keys (9 degrees of freedom). The
    threshold 45 is exceeded by a uniform source with probability below 1e-6."""
    keys = [generate_short_key() for _ in range(70_000)]
    for position in range(7):
        counts = Counter(key[position] for key in keys)
        expected = len(keys) / 10
        chi2 = sum((counts[str(d)] - expected) ** 2 / expected for d in range(10))
        assert chi2 < 45, (position, counts)
    # and whole keys: values fall evenly into ten bands of a million
    bands = Counter(int(key) // 1_000_000 for key in keys)
    expected = len(keys) / 10
    assert sum((bands[b] - expected) ** 2 / expected for b in range(10)) < 45


@pytest.mark.parametrize(
    ("typed", "key"),
    [("0421337", "0421337"), (" 042 1337 ", "0421337"), ("042-1337", "0421337"),
     ("042.13.37", "0421337"), ("421337", None), ("04213370", None), ("042133x", None),
     ("٠٤٢١٣٣٧", None), ("", None), ("1" * 100, None)],
)
def test_typed_keys_are_normalised(typed: str, key: str | None) -> None:
    assert normalise_short_key(typed) == key


# --- queues and TTL -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [("general", QueueKind.GENERAL, ""), ("rep:12", QueueKind.REP, "12"),
     ("rep_username:alice.smith", QueueKind.REP_USERNAME, "alice.smith")],
)
def test_queue_ids(text: str, kind: QueueKind, value: str) -> None:
    queue = QueueId.parse(text)
    assert (queue.kind, queue.value) == (kind, value)
    assert str(queue) == text
    assert QueueId.parse("general") == GENERAL_QUEUE


@pytest.mark.parametrize(
    "text",
    ["", "General", "rep", "rep:", "rep:0", "rep:-1", "rep:abc", "rep:1.5", "team:3",
     "rep_username:", "rep_username:a b", "rep_username:<script>", "issue:x", "general:1"],
)
def test_bad_queue_ids_blame_the_caller(text: str) -> None:
    with pytest.raises(SessionKeyRequestError) as caught:
        QueueId.parse(text)
    assert caught.value.field == "queue_id"


def test_ttl() -> None:
    assert validate_ttl(None) == validate_ttl("") == DEFAULT_TTL_SECONDS == 86400
    assert validate_ttl(MIN_TTL_SECONDS) == 60
    assert validate_ttl(str(MAX_TTL_SECONDS)) == MAX_TTL_SECONDS == 7 * 86400
    for bad in (59, MAX_TTL_SECONDS + 1, 0, -60, "abc", "60.5", "-60", "٦٠", True):
        with pytest.raises(SessionKeyRequestError) as caught:
            validate_ttl(bad)
        assert caught.value.field == "ttl"


# --- the store ------------------------------------------------------------------------


def test_issue_and_reply_shape() -> None:
    store = SessionKeyStore(randbelow=lambda _: 421337)
    key = store.issue("rep_username:alice", T0, ttl=600, created_by="api:crm")
    assert key.short_key == "0421337"
    assert (key.created_at, key.expires_at, key.ttl) == (T0, T0 + 600, 600)
    assert key.created_by == "api:crm" and not key.is_used
    assert key.reply(SITE) == SessionKeyReply(
        short_key="0421337",
        key_url="https://support.example.com/s/0421337",
        expires=int(T0) + 600,
        queue_id="rep_username:alice",
    )
    assert store.get("0421337") == key and len(store) == 1


@pytest.mark.parametrize(("port", "url"), [
    (443, "https://support.example.com/s/0421337"),
    (8443, "https://support.example.com:8443/s/0421337"),
    (80, "https://support.example.com:80/s/0421337"),
])
def test_key_url_names_the_primarys_port_unless_443(port: int, url: str) -> None:
    key = SessionKeyStore(randbelow=lambda _: 421337).issue(GENERAL_QUEUE, T0)
    assert key.key_url(SITE, port) == url
    assert key.reply(SITE, port).key_url == url


def test_redeem_once() -> None:
    store = SessionKeyStore()
    key = store.issue(GENERAL_QUEUE, T0)
    used = store.redeem(f" {key.short_key[:3]} {key.short_key[3:]}", source_ip=CUSTOMER,
                        now=T0 + 5)
    assert (used.redeemed_at, used.redeemed_by, used.queue_id) == (T0 + 5, CUSTOMER, GENERAL_QUEUE)
    with pytest.raises(SessionKeyUsed) as caught:
        store.redeem(key.short_key, source_ip=CUSTOMER, now=T0 + 6)
    assert caught.value.code is ErrorCode.KEY_USED
    assert "already been used" in caught.value.message


def test_keys_expire() -> None:
    store = SessionKeyStore()
    key = store.issue("general", T0, ttl=60)
    store_copy = SessionKeyStore()
    kept = store_copy.issue("general", T0, ttl=60)
    store_copy.redeem(kept.short_key, source_ip=CUSTOMER, now=T0 + 59.999)  # still valid
    with pytest.raises(SessionKeyExpired) as caught:
        store.redeem(key.short_key, source_ip=CUSTOMER, now=T0 + 60)
    assert caught.value.code is ErrorCode.KEY_EXPIRED
    assert store.outstanding(T0 + 60) == 0


def test_expired_and_used_keys_are_purged_after_a_while() -> None:
    store = SessionKeyStore()
    unused = store.issue("general", T0, ttl=60)
    used = store.issue("general", T0, ttl=120)
    store.redeem(used.short_key, source_ip=CUSTOMER, now=T0 + 1)
    live = store.issue("general", T0, ttl=86400)
    assert store.purge(T0 + 60 + EXPIRED_KEY_MEMORY_SECONDS - 1) == 0
    assert store.purge(T0 + 60 + EXPIRED_KEY_MEMORY_SECONDS) == 1
    assert store.get(unused.short_key) is None
    assert store.purge(T0 + 120 + EXPIRED_KEY_MEMORY_SECONDS) == 1
    assert [k.short_key for k in store] == [live.short_key]
    with pytest.raises(WrongSessionKey):
        store.redeem(unused.short_key, source_ip=CUSTOMER, now=T0 + 9000)


def test_wrong_key() -> None:
    store = SessionKeyStore(randbelow=lambda _: 1)
    store.issue("general", T0)
    for typed in ("0000002", "12", "abcdefg"):
        with pytest.raises(WrongSessionKey) as caught:
            store.redeem(typed, source_ip=CUSTOMER, now=T0)
        assert caught.value.code is ErrorCode.KEY_INVALID


def test_collisions_draw_again() -> None:
    draws = iter([5, 5, 5, 6])
    store = SessionKeyStore(randbelow=lambda _: next(draws))
    assert store.issue("general", T0).short_key == "0000005"
    assert store.issue("general", T0).short_key == "0000006"


def test_store_is_bounded() -> None:
    store = SessionKeyStore(max_keys=3)
    for _ in range(3):
        store.issue("general", T0, ttl=60)
    with pytest.raises(SessionKeyStoreFull):
        store.issue("general", T0 + 59)
    # once they expire, a full store makes room at once (no memory period)
    store.issue("general", T0 + 60)
    assert len(store) == 1
    with pytest.raises(ValueError):
        SessionKeyStore(max_keys=2_000_000)  # more than 10 % of the key space


def test_revoke() -> None:
    store = SessionKeyStore()
    key = store.issue("general", T0)
    assert store.revoke(key.short_key) == key
    assert store.revoke(key.short_key) is None
    with pytest.raises(WrongSessionKey):
        store.redeem(key.short_key, source_ip=CUSTOMER, now=T0)


# --- rate limiting --------------------------------------------------------------------


def test_scopes() -> None:
    assert source_scopes("203.0.113.9") == (
        (Scope.HOST, "203.0.113.9/32"), (Scope.NETWORK, "203.0.113.0/24"),
    )
    assert source_scopes("::ffff:203.0.113.9") == source_scopes("203.0.113.9")
    assert source_scopes("2001:db8:1:2:3:4:5:6") == (
        (Scope.HOST, "2001:db8:1:2::/64"), (Scope.NETWORK, "2001:db8:1::/48"),
    )
    with pytest.raises(ValueError):
        source_scopes("not an address")


def test_five_tries_a_minute() -> None:
    store = SessionKeyStore()
    for _ in range(HOST_POLICY.burst):
        with pytest.raises(WrongSessionKey):
            store.redeem("0000000", source_ip=ATTACKER, now=T0)
    with pytest.raises(RedeemRateLimited) as caught:
        store.redeem("0000000", source_ip=ATTACKER, now=T0)
    refusal = caught.value
    assert (refusal.code, refusal.scope, refusal.locked) == (
        ErrorCode.RATE_LIMITED, Scope.HOST, False
    )
    assert refusal.retry_after_seconds == 12  # one token back every 60/5 s
    # the refused try cost nothing; one token is back 12 s after the bucket emptied
    with pytest.raises(RedeemRateLimited) as caught:
        store.redeem("0000000", source_ip=ATTACKER, now=T0 + 11.5)
    assert caught.value.retry_after_seconds == 1  # rounded up
    with pytest.raises(WrongSessionKey):
        store.redeem("0000000", source_ip=ATTACKER, now=T0 + 12)
    # other sources are not affected
    key = store.issue("general", T0 + 13)
    assert store.redeem(key.short_key, source_ip=CUSTOMER, now=T0 + 13).is_used


def test_even_the_right_key_waits_while_limited() -> None:
    store = SessionKeyStore()
    key = store.issue("general", T0)
    for _ in range(HOST_POLICY.burst):
        with pytest.raises(WrongSessionKey):
            store.redeem("0000000" if key.short_key != "0000000" else "0000001",
                         source_ip=CUSTOMER, now=T0)
    with pytest.raises(RedeemRateLimited):
        store.redeem(key.short_key, source_ip=CUSTOMER, now=T0)
    assert not store.get(key.short_key).is_used  # type: ignore[union-attr]
    assert store.redeem(key.short_key, source_ip=CUSTOMER, now=T0 + 12).is_used


def test_right_keys_cost_nothing() -> None:
    store = SessionKeyStore(max_keys=1000)
    keys = [store.issue("general", T0) for _ in range(100)]
    for key in keys:  # one office behind one address, many customers
        store.redeem(key.short_key, source_ip=CUSTOMER, now=T0)


def _try_until_locked(limiter: RedeemLimiter, source: str, now: float) -> float:
    """Wrong keys as fast as allowed until the source is locked out; returns the time."""
    while True:
        try:
            limiter.check(source, now)
        except RedeemRateLimited as refusal:
            if refusal.locked:
                return now
            now += refusal.retry_after_seconds
            continue
        limiter.record_failure(source, now)


def test_lockout_after_twenty_wrong_keys_doubles_and_is_forgotten() -> None:
    limiter = RedeemLimiter()
    wrong = 0
    now = T0
    while wrong < HOST_POLICY.lockout_after:
        try:
            limiter.check(ATTACKER, now)
        except RedeemRateLimited as refusal:
            assert not refusal.locked
            now += refusal.retry_after_seconds
            continue
        limiter.record_failure(ATTACKER, now)
        wrong += 1
    assert now - T0 == pytest.approx(15 * 12)  # 5 at once, then one every 12 s
    with pytest.raises(RedeemRateLimited) as caught:
        limiter.check(ATTACKER, now)
    assert caught.value.locked and caught.value.retry_after_seconds == 300
    assert limiter.retry_after(ATTACKER, now) == 300
    assert limiter.retry_after(CUSTOMER, now) == 0
    # the next lockout lasts twice as long, the one after four times
    locked_at = _try_until_locked(limiter, ATTACKER, now + 300)
    assert limiter.retry_after(ATTACKER, locked_at) == 600
    locked_at = _try_until_locked(limiter, ATTACKER, locked_at + 600)
    assert limiter.retry_after(ATTACKER, locked_at) == 1200
    # an hour of quiet after the lockout: it all starts over
    quiet = locked_at + 1200 + HOST_POLICY.forget_after_seconds
    locked_at = _try_until_locked(limiter, ATTACKER, quiet)
    assert limiter.retry_after(ATTACKER, locked_at) == 300


def _guesses_until(
    limiter: RedeemLimiter, sources: list[str], seconds: float, shared: Scope = Scope.HOST
) -> int:
    """An attacker who tries wrong keys as fast as the limits allow, rotating over
    ``sources`` (which share the ``shared`` scope); how many keys get checked within
    ``seconds``."""
    now, checked = T0, 0
    for source in itertools.cycle(sources):
        if now >= T0 + seconds:
            return checked
        try:
            limiter.check(source, now)
        except RedeemRateLimited as refusal:
            if refusal.scope is shared:  # every source waits for this one
                now += refusal.retry_after_seconds
            continue
        limiter.record_failure(source, now)
        checked += 1
    raise AssertionError("unreachable")


def test_brute_force_from_one_address_is_locked_out_early() -> None:
    """10,000 guesses fired from one address in 100 s: only the burst and one guess per
    12 s are checked, and a real key among the later guesses is never reached."""
    store = SessionKeyStore(randbelow=lambda _: 7_654_321)
    target = store.issue("general", T0)
    guesses = [f"{n:07d}" for n in range(10_000)]
    guesses[5_000] = target.short_key
    checked, now = 0, T0
    for guess in guesses:
        now += 0.01  # 100 tries a second
        try:
            store.redeem(guess, source_ip=ATTACKER, now=now)
        except WrongSessionKey:
            checked += 1
        except RedeemRateLimited:
            pass
    assert checked == HOST_POLICY.burst + int(100 / (60 / HOST_POLICY.per_minute))  # 13
    assert not store.get(target.short_key).is_used  # type: ignore[union-attr]


def test_patient_brute_force_gets_a_few_hundred_guesses_a_day() -> None:
    """An attacker who waits exactly as long as told. With the store full
    (DEFAULT_MAX_KEYS outstanding), each guess succeeds with p ≤ 1e-3."""
    day = _guesses_until(RedeemLimiter(), [ATTACKER], 86400)
    week = _guesses_until(RedeemLimiter(), [ATTACKER], 7 * 86400)
    assert day <= 200 and week <= 320
    assert DEFAULT_MAX_KEYS / 10**7 <= 1e-3
    # a whole /24 rotating its addresses is held by the network limit
    network = [f"203.0.113.{i}" for i in range(256)]
    assert _guesses_until(RedeemLimiter(), network, 86400, Scope.NETWORK) <= 1000
    # and a whole IPv6 /64 counts as one address
    v6 = [f"2001:db8:0:1::{i:x}" for i in range(1, 200)]
    assert _guesses_until(RedeemLimiter(), v6, 86400) <= 200


def test_limiter_memory_is_bounded_and_purged() -> None:
    limiter = RedeemLimiter(max_sources=3)
    for i in range(10):
        limiter.record_failure(f"10.0.{i}.1", T0)
    assert limiter.tracked(Scope.HOST) == 3 and limiter.tracked(Scope.NETWORK) == 3
    assert limiter.purge(T0 + HOST_POLICY.forget_after_seconds - 1) == 0
    assert limiter.purge(T0 + HOST_POLICY.forget_after_seconds) == 6
    assert limiter.tracked(Scope.HOST) == 0


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        LimitPolicy(burst=0, per_minute=5, lockout_after=20, lockout_seconds=300,
                    max_lockout_seconds=600, forget_after_seconds=60)
    assert NETWORK_POLICY.lockout_after > HOST_POLICY.lockout_after


# --- the store as a whole -----------------------------------------------------------


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["issue", "redeem", "guess", "wait", "purge"]),
                          st.integers(0, 10**6)), max_size=60))
def test_random_operations_keep_the_promises(ops: list[tuple[str, int]]) -> None:
    store = SessionKeyStore(max_keys=8, randbelow=secrets.randbelow)
    now = T0
    issued: dict[str, float] = {}  # short key → expiry
    redeemed: set[str] = set()
    for op, n in ops:
        if op == "issue":
            try:
                key = store.issue("general", now, ttl=60 + n % 600)
            except SessionKeyStoreFull:
                assert store.outstanding(now) + sum(
                    1 for k in store if k.is_used or k.is_expired(now)) == len(store) == 8
                continue
            assert key.short_key not in issued or issued[key.short_key] <= now
            issued[key.short_key] = key.expires_at
            redeemed.discard(key.short_key)
        elif op in ("redeem", "guess") and issued:
            short_key = sorted(issued)[n % len(issued)] if op == "redeem" else f"{n:07d}"
            source = f"198.51.{n % 7}.{n % 5}"
            try:
                key = store.redeem(short_key, source_ip=source, now=now)
            except (WrongSessionKey, SessionKeyUsed, SessionKeyExpired, RedeemRateLimited):
                continue
            assert key.short_key not in redeemed
            assert now < issued[key.short_key]
            redeemed.add(key.short_key)
        elif op == "wait":
            now += n % 900
        elif op == "purge":
            store.purge(now)
        assert len(store) <= 8
