"""What the /login feature keeps in memory for one application."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aiohttp import web

from atlas.node.runtime import Node
from atlas.web.login.csrf import LoginCsrf
from atlas.web.login.lockout import AddressLimiter

# DATA_DIR/secrets/<this>: the key that signs the login form's CSRF tokens.
KEY_SECRET = "web_login_key"  # noqa: S105 (a file name, not a secret)

T = TypeVar("T")


class OneTimeStore(Generic[T]):
    """Per-session values readable once and only for ``ttl`` seconds; bounded.

    Holds the new API account's client secret between the form post and the page
    that shows it, so the secret is never stored on disk and never shown twice.
    """

    def __init__(self, ttl: float = 300.0, max_items: int = 1000) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def put(self, key: str, value: T, now: float) -> None:
        self._items.pop(key, None)
        self._items[key] = (now + self.ttl, value)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def take(self, key: str, now: float) -> T | None:
        item = self._items.pop(key, None)
        if item is None or item[0] <= now:
            return None
        return item[1]


@dataclass(frozen=True)
class ShownSecret:
    account_id: int
    name: str
    client_id: str
    client_secret: str


@dataclass
class LoginState:
    login_csrf: LoginCsrf
    limiter: AddressLimiter = field(default_factory=AddressLimiter)
    new_secrets: OneTimeStore[ShownSecret] = field(default_factory=OneTimeStore)
    clock: Callable[[], float] = time.time  # tests move time forward through this

    def now(self) -> float:
        return self.clock()


LOGIN_STATE: web.AppKey[LoginState] = web.AppKey("atlas_login_state", LoginState)


def signing_key(node: Node) -> bytes:
    """The node's key for login CSRF tokens, created (0600) on first use."""
    key = node.datadir.read_secret(KEY_SECRET)
    if key is None or len(key) < 32:
        key = secrets.token_bytes(32)
        node.datadir.write_secret(KEY_SECRET, key)
    return key
