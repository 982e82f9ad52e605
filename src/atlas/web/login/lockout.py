"""Login throttling: per-account lockout with exponential backoff, per-address limit.

Account: the rules are in :mod:`atlas.store.lockout` (shared with representative
accounts) and re-exported here for the sign-in page.

Client address (in memory): at most ``limit`` failed logins within ``window`` seconds;
beyond that every login attempt from the address is refused until the oldest failure
leaves the window. This bounds password guessing across many user names, which the
account lockout alone does not.

Pure: the caller passes the time in.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from atlas.store.lockout import (
    FIRST_LOCK,
    LOCK_AFTER,
    MAX_LOCK,
    Failure,
    after_failure,
    lock_seconds,
    locked,
)

__all__ = [
    "FIRST_LOCK",
    "LOCK_AFTER",
    "MAX_LOCK",
    "AddressLimiter",
    "Failure",
    "after_failure",
    "lock_seconds",
    "locked",
]


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
