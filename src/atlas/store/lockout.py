"""Account lockout after failed logins: exponential backoff (administrators, representatives).

Stored per account in ``failed_logins`` / ``locked_until`` (tables ``admins`` and
``representatives``):

* every wrong password while the account is not locked counts one failure;
* from the 5th consecutive failure on, the account is locked for 30 s, doubling with each
  further failure (60 s, 120 s, …) up to 15 minutes;
* attempts while locked are refused without counting (so waiting out a lock always
  helps), and a successful login resets the count.

Pure: the caller passes the time in. It lives in the store layer because both the store
(``atlas.store.representatives.authenticate``) and the /login sign-in page apply it;
``atlas.web.login.lockout`` re-exports it next to the per-address limit.
"""

from __future__ import annotations

from dataclasses import dataclass

LOCK_AFTER = 5
FIRST_LOCK = 30.0
MAX_LOCK = 15 * 60.0


def lock_seconds(failures: int) -> float:
    """How long an account is locked after its ``failures``-th consecutive failure."""
    if failures < LOCK_AFTER:
        return 0.0
    doublings = failures - LOCK_AFTER
    if doublings >= 16:  # 30 s · 2^16 is far past the cap; avoid huge powers
        return MAX_LOCK
    return min(FIRST_LOCK * float(2**doublings), MAX_LOCK)


def locked(locked_until: float, now: float) -> bool:
    return now < locked_until


@dataclass(frozen=True)
class Failure:
    """The account's state after one more failure at ``now``."""

    failures: int
    locked_until: float


def after_failure(failures: int, now: float) -> Failure:
    n = failures + 1
    wait = lock_seconds(n)
    return Failure(n, now + wait if wait else 0.0)
