"""Cross-site request forgery defences for /login.

* Signed-in pages: one random token per session (``web_sessions.csrf_token``), sent back
  in the hidden ``csrf_token`` field of every form or, for ``fetch()``, in the
  ``X-CSRF-Token`` header, and compared in constant time on every POST.
* The login form, before any session exists: a signed double-submit cookie. The page sets
  cookie ``atlas_login_csrf`` and puts the same value in the form; the value is
  ``nonce.issued.signature`` with an HMAC-SHA256 signature under the node's key, so a
  value planted by someone who cannot sign is refused too (OWASP CSRF cheat sheet,
  "Signed Double-Submit Cookie").
* An ``Origin`` header naming another host is refused as well (defence in depth).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from atlas.store.passwords import same

FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
LOGIN_COOKIE = "atlas_login_csrf"
LOGIN_COOKIE_PATH = "/login"
LOGIN_TOKEN_LIFETIME = 2 * 3600.0
MAX_TOKEN_LENGTH = 256
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


def token_matches(expected: str, submitted: str | None) -> bool:
    """Constant-time check of a submitted token against the session's."""
    if not submitted or len(submitted) > MAX_TOKEN_LENGTH or not submitted.isascii():
        return False
    return same(expected, submitted)


async def submitted_token(request: web.Request) -> str | None:
    """The token a request carries: the ``X-CSRF-Token`` header, else the form field."""
    header = request.headers.get(HEADER)
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.post()).get(FIELD)
        return value if isinstance(value, str) else None
    return None


def origin_ok(request: web.Request) -> bool:
    """False when the browser says the request comes from another host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("https", "http") and parts.netloc.lower() == request.host.lower()


class LoginCsrf:
    """Issues and checks the login form's signed double-submit tokens."""

    def __init__(self, key: bytes, lifetime: float = LOGIN_TOKEN_LIFETIME) -> None:
        if len(key) < 32:
            raise ValueError("the login CSRF key must be at least 32 bytes")
        self._key = key
        self.lifetime = lifetime

    def _sign(self, nonce: str, issued: str) -> str:
        mac = hmac.new(self._key, f"atlas-login-csrf|{nonce}|{issued}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def issue(self, now: float) -> str:
        nonce, issued = secrets.token_urlsafe(24), str(int(now))
        return f"{nonce}.{issued}.{self._sign(nonce, issued)}"

    def valid(self, cookie: str | None, submitted: str | None, now: float) -> bool:
        """The form's value equals the cookie's, is signed by us and not too old."""
        if not cookie or not submitted or len(cookie) > MAX_TOKEN_LENGTH:
            return False
        if not cookie.isascii() or not submitted.isascii() or not same(cookie, submitted):
            return False
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return False
        nonce, issued, signature = parts
        if not same(self._sign(nonce, issued), signature):
            return False
        return 0 <= now - int(issued) <= self.lifetime


def set_login_cookie(response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE, token, path=LOGIN_COOKIE_PATH, secure=True, httponly=True,
        samesite="Strict", max_age=int(LOGIN_TOKEN_LIFETIME),
    )


def clear_login_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(
        LOGIN_COOKIE, path=LOGIN_COOKIE_PATH, secure=True, httponly=True, samesite="Strict"
    )
