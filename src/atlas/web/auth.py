"""Who is calling an API: bearer tokens (RFC 6750) and, for /api/v1, the /login session.

Both APIs call :func:`authenticate`; each turns an :class:`AuthFailure` into its own
error format (XML ``<error>`` for the Command API, JSON for /api/v1) but with the same
status (401) and the same ``WWW-Authenticate`` challenge.

The web UI calls /api/v1 with ``fetch()`` from /login pages. Those calls carry the /login
session cookie instead of a token; the login feature plugs in here with
:func:`register_session_authenticator`. This module never reads cookies itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from atlas.node.app import NODE
from atlas.store.api_accounts import (
    ApiAccount,
    Permission,
    TokenState,
    check_token,
)

CSRF_HEADER = "X-CSRF-Token"
REALM = "atlas"
MAX_TOKEN_LENGTH = 512


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``kind`` is ``"api_account"`` (bearer token) or ``"session"`` (a /login administrator
    using the web UI); ``name`` is for logs and audit; ``permissions`` are already expanded
    (``command:full`` includes ``command:read``).
    """

    kind: str
    name: str
    permissions: frozenset[Permission]
    account: ApiAccount | None = None

    def allows(self, permission: Permission) -> bool:
        return permission in self.permissions

    @classmethod
    def for_account(cls, account: ApiAccount) -> Principal:
        return cls("api_account", account.name, account.effective_permissions, account)


@dataclass(frozen=True)
class AuthFailure:
    """Why a request is not authenticated; ``error`` is the RFC 6750 §3.1 code or None
    when the request carried no credentials at all (§3.1: then no error code)."""

    message: str
    error: str | None = "invalid_token"

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` header value for a 401 answer (RFC 6750 §3)."""
        if self.error is None:
            return f'Bearer realm="{REALM}"'
        desc = self.message.replace("\\", "").replace('"', "'")
        return f'Bearer realm="{REALM}", error="{self.error}", error_description="{desc}"'


PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("atlas_principal", Principal)
"""Set on a request by the API that authenticated it; read it with ``request[PRINCIPAL]``."""

SessionAuthenticator = Callable[[web.Request], Awaitable[Principal | None]]
"""Given a request that carries no ``Authorization`` header but does carry the
``X-CSRF-Token`` header, return the administrator behind a valid /login session cookie
whose CSRF token equals that header (compare in constant time), or None."""

_session_authenticators: list[SessionAuthenticator] = []


def register_session_authenticator(fn: SessionAuthenticator) -> None:
    """Let /api/v1 accept a /login session (cookie + ``X-CSRF-Token`` header).

    The login feature calls this from its ``setup(app)``. Registering the same function
    twice (several apps in one process, as in tests) has no further effect.
    """
    if fn not in _session_authenticators:
        _session_authenticators.append(fn)


MISSING = AuthFailure(
    "this API needs an access token: request one at /oauth2/token with your API "
    "account's client id and secret, then send it as 'Authorization: Bearer <token>'",
    error=None,
)


async def authenticate(request: web.Request, *, allow_session: bool) -> Principal | AuthFailure:
    """The caller of ``request`` or why it is not authenticated.

    A bearer token wins; without an ``Authorization`` header and with ``allow_session``,
    a /login session is tried, but only if the request carries ``X-CSRF-Token`` (so a
    cross-site form post with the cookie alone never authenticates).
    """
    header = request.headers.get("Authorization")
    if header is None:
        if allow_session and request.headers.get(CSRF_HEADER):
            for fn in _session_authenticators:
                principal = await fn(request)
                if principal is not None:
                    return principal
            return AuthFailure(
                "the /login session is missing, expired, or its X-CSRF-Token does not "
                "match; sign in again",
                error=None,
            )
        return MISSING
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return AuthFailure(
            "the Authorization header must be 'Bearer <access token>'; request a token at "
            "/oauth2/token",
            error=None,
        )
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii() or not token.isprintable():
        return AuthFailure("the access token is not valid; request a new one at /oauth2/token")
    check = check_token(request.config_dict[NODE].db, token)
    if check.state is TokenState.EXPIRED:
        return AuthFailure("the access token has expired; request a new one at /oauth2/token")
    if check.account is None:
        return AuthFailure(
            "the access token is not valid (unknown, or its API account was revoked); "
            "request a new one at /oauth2/token"
        )
    return Principal.for_account(check.account)
