"""``POST /oauth2/token``: OAuth 2 client credentials for API accounts (RFC 6749 §4.4).

The API account's client id and secret come in HTTP Basic (§2.3.1; the form fields
``client_id``/``client_secret`` are accepted too, never both); the answer is a bearer
token (RFC 6750) valid for an hour, as BeyondTrust's API does::

    {"access_token": "…", "token_type": "Bearer", "expires_in": 3600}

Errors use the §5.2 JSON shape. Failed client authentications are counted per source
address; past the limit the address is refused (429, ``Retry-After``) until its window
ends, even with the right secret, so a secret cannot be guessed at speed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import unquote_plus

from aiohttp import web

from atlas.node.app import NODE
from atlas.store.api_accounts import authenticate_client, issue_token

log = logging.getLogger("atlas.oauth")

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a URL path, not a secret
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_CREDENTIAL_LENGTH = 256
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class FailedAuthLimiter:
    """Counts failed client authentications per source address in fixed windows.

    Memory is bounded: at most ``max_addresses`` entries, the least recently failing
    address forgotten first.
    """

    def __init__(
        self,
        max_failures: int = 10,
        window_seconds: float = 300.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None if it may try now."""
        entry = self._failures.get(address)
        if entry is None:
            return None
        start, count = entry
        remaining = start + self.window_seconds - self._clock()
        if remaining <= 0:
            del self._failures[address]
            return None
        return remaining if count >= self.max_failures else None

    def record_failure(self, address: str) -> None:
        now = self._clock()
        start, count = self._failures.pop(address, (now, 0))
        if now - start >= self.window_seconds:
            start, count = now, 0
        self._failures[address] = (start, count + 1)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)


OAUTH_LIMITER: web.AppKey[FailedAuthLimiter] = web.AppKey("atlas_oauth_limiter", FailedAuthLimiter)


class _OAuthError(Exception):
    """An RFC 6749 §5.2 error answer."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(
            {"error": self.error, "error_description": self.description},
            status=self.status,
            headers={**NO_STORE, **self.headers},
        )


def _invalid_client(description: str) -> _OAuthError:
    # §5.2: 401 with a challenge for the scheme the client used (we only offer Basic).
    return _OAuthError(
        "invalid_client", description, 401, {"WWW-Authenticate": 'Basic realm="atlas"'}
    )


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise _invalid_client("use HTTP Basic authentication with the client id and secret")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _invalid_client("the Basic credentials are not valid base64 of id:secret") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _invalid_client("the Basic credentials must be client_id:client_secret")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    return unquote_plus(client_id), unquote_plus(secret)


async def _form(request: web.Request) -> dict[str, str]:
    ctype = request.content_type
    if ctype != FORM_TYPE:
        raise _OAuthError(
            "invalid_request",
            f"send the parameters as {FORM_TYPE} (got {ctype or 'no content type'})",
        )
    try:
        post = await request.post()
    except ValueError:
        raise _OAuthError("invalid_request", "the form body could not be parsed") from None
    out: dict[str, str] = {}
    for key in post:
        values = post.getall(key)
        if len(values) > 1:  # §3.2: parameters MUST NOT be included more than once
            raise _OAuthError("invalid_request", f"parameter {key!r} given more than once")
        value = values[0]
        if not isinstance(value, str):
            raise _OAuthError("invalid_request", f"parameter {key!r} must be a plain value")
        out[key] = value
    return out


def _client_credentials(request: web.Request, form: dict[str, str]) -> tuple[str, str]:
    header = request.headers.get("Authorization")
    in_form = "client_id" in form or "client_secret" in form
    if header is not None and in_form:
        raise _OAuthError(
            "invalid_request",
            "give the client credentials either in HTTP Basic or in the form, not both",
        )
    if header is not None:
        client_id, secret = _basic_credentials(header)
    elif in_form:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    else:
        raise _invalid_client(
            "client authentication required: HTTP Basic with the API account's "
            "client id and secret"
        )
    if not client_id or not secret:
        raise _invalid_client("both the client id and the client secret are required")
    if len(client_id) > MAX_CREDENTIAL_LENGTH or len(secret) > MAX_CREDENTIAL_LENGTH:
        raise _invalid_client("the client id or secret is too long")
    return client_id, secret


async def token(request: web.Request) -> web.Response:
    """Issue a bearer token for valid API-account client credentials."""
    limiter = request.app[OAUTH_LIMITER]
    address = request.remote or "unknown"
    try:
        wait = limiter.retry_after(address)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise _OAuthError(
                "invalid_client",
                f"too many failed client authentications from {address}; "
                f"retry in {seconds} seconds",
                429,
                {"Retry-After": str(seconds)},
            )
        form = await _form(request)
        try:
            client_id, secret = _client_credentials(request, form)
        except _OAuthError as exc:
            if exc.error == "invalid_client":
                limiter.record_failure(address)
            raise
        grant_type = form.get("grant_type")
        if not grant_type:
            raise _OAuthError("invalid_request", "grant_type is required: client_credentials")
        if grant_type != "client_credentials":
            raise _OAuthError(
                "unsupported_grant_type",
                f"grant_type {grant_type!r} is not supported; use client_credentials",
            )
        db = request.app[NODE].db
        # argon2 verification takes tens of milliseconds: keep it off the event loop.
        account = await asyncio.to_thread(authenticate_client, db, client_id, secret)
        if account is None:
            limiter.record_failure(address)
            log.warning(
                "client authentication failed",
                extra={"client_id": client_id[:64], "remote": address},
            )
            raise _invalid_client("unknown client id, wrong secret, or revoked API account")
    except _OAuthError as exc:
        return exc.response()
    access_token, expires_in = issue_token(db, account)
    log.info("access token issued", extra={"client_id": client_id, "account": account.name})
    return web.json_response(
        {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in},
        headers=NO_STORE,
    )


def setup(app: web.Application) -> None:
    app[OAUTH_LIMITER] = FailedAuthLimiter()
    app.router.add_post(TOKEN_PATH, token)
