"""Login throttling: per-account lockout with exponential backoff, per-address limit.

Account (stored in ``admins.failed_logins`` / ``admins.locked_until``):

* every wrong password while the account is not locked counts one failure;
* from the 5th consecutive failure on, the account is locked for 30 s, doubling with each
  further failure (60 s, 120 s, …) up to 15 minutes;
* attempts while locked are refused without counting (so waiting out a lock always
  helps), and a successful login resets the count.

Client address (in memory): at most ``limit`` failed logins within ``window`` seconds;
beyond that every login attempt from the address is refused until the oldest failure
leaves the window. This bounds password guessing across many user names, which the
account lockout alone does not.

Pure: the caller passes the time in.
"""

from __future__ import annotations

from collections import OrderedDict, deque
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


class AddressLimiter:
    """Failed logins per client address in a sliding window; bounded memory."""

    def __init__(self, limit: int = 20, window: float = 300.0, max_addresses: int = 10_000):
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str, now: float) -> float:
        """0 if ``address`` may try to log in now, else seconds until it may."""
        times = self._recent(address, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - now)

    def failed(self, address: str, now: float) -> None:
        times = self._recent(address, now) or deque(maxlen=self.limit)
        times.append(now)
        self._failures[address] = times
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
