"""API accounts (/login → Management → API Configuration) and their OAuth bearer tokens.

Permissions (guide/BeyondTrust wording): the Command API read-only or full, and the
configuration API (``/api/v1``) read or write.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from atlas.store.db import Database
from atlas.store.passwords import hash_password, token_digest, verify_password

TOKEN_LIFETIME_SECONDS = 3600


class Permission(StrEnum):
    COMMAND_READ = "command:read"  # Command API, read-only actions
    COMMAND_FULL = "command:full"  # Command API, every action (implies read)
    CONFIG_READ = "config:read"  # /api/v1 GET
    CONFIG_WRITE = "config:write"  # /api/v1 changes (implies read)

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[Permission, str] = {
    Permission.COMMAND_READ: "Command API, read-only actions",
    Permission.COMMAND_FULL: "Command API, every action (implies command:read)",
    Permission.CONFIG_READ: "Configuration API (/api/v1), read",
    Permission.CONFIG_WRITE: "Configuration API (/api/v1), read and change (implies config:read)",
}


IMPLIES: dict[Permission, frozenset[Permission]] = {
    Permission.COMMAND_FULL: frozenset({Permission.COMMAND_READ}),
    Permission.CONFIG_WRITE: frozenset({Permission.CONFIG_READ}),
}


def expand(perms: frozenset[Permission]) -> frozenset[Permission]:
    """``perms`` with every permission they imply (full → read, write → read)."""
    out = set(perms)
    for p in perms:
        out |= IMPLIES.get(p, frozenset())
    return frozenset(out)


class ApiAccountError(ValueError):
    """Bad input for an API account; the message names the field."""


@dataclass(frozen=True)
class ApiAccount:
    id: int
    name: str
    client_id: str
    permissions: frozenset[Permission]
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def effective_permissions(self) -> frozenset[Permission]:
        """The granted permissions and every one they imply."""
        return expand(self.permissions)


@dataclass(frozen=True)
class NewAccount:
    account: ApiAccount
    client_secret: str  # shown once, never stored


class TokenState(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    UNKNOWN = "unknown"  # never issued, forged, or its account was revoked


@dataclass(frozen=True)
class TokenCheck:
    """What a presented bearer token is: its account when valid, else why not."""

    state: TokenState
    account: ApiAccount | None = None


def parse_permissions(values: list[str]) -> frozenset[Permission]:
    """Permission names (``command:full``) to permissions; a clear error for unknown ones."""
    out: set[Permission] = set()
    for v in values:
        try:
            out.add(Permission(v.strip()))
        except ValueError:
            allowed = ", ".join(p.value for p in Permission)
            raise ApiAccountError(f"permission {v!r} is unknown; allowed: {allowed}") from None
    if not out:
        raise ApiAccountError("an API account needs at least one permission")
    return frozenset(out)


def _row(r: object) -> ApiAccount:
    row: dict[str, object] = dict(r)  # type: ignore[call-overload]
    perms = frozenset(Permission(p) for p in json.loads(str(row["permissions"])))
    revoked = row["revoked_at"]
    return ApiAccount(
        id=int(row["id"]),  # type: ignore[call-overload]
        name=str(row["name"]),
        client_id=str(row["client_id"]),
        permissions=perms,
        created_at=float(row["created_at"]),  # type: ignore[arg-type]
        revoked_at=None if revoked is None else float(revoked),  # type: ignore[arg-type]
    )


def create_account(db: Database, name: str, permissions: frozenset[Permission]) -> NewAccount:
    n = name.strip()
    if not n:
        raise ApiAccountError("name: must not be empty")
    if len(n) > 64 or any(not c.isprintable() for c in n):
        raise ApiAccountError("name: at most 64 printable characters")
    if not permissions:
        raise ApiAccountError("permissions: choose at least one")
    client_id = secrets.token_hex(16)
    secret = secrets.token_urlsafe(32)
    cur = db.execute(
        "INSERT INTO api_accounts(name, client_id, secret_hash, permissions, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (n, client_id, hash_password(secret),
         json.dumps(sorted(p.value for p in permissions)), time.time()),
    )
    acc = get_account(db, int(cur.lastrowid or 0))
    assert acc is not None
    return NewAccount(acc, secret)


def get_account(db: Database, account_id: int) -> ApiAccount | None:
    r = db.one("SELECT * FROM api_accounts WHERE id = ?", (account_id,))
    return None if r is None else _row(r)


def get_account_by_client_id(db: Database, client_id: str) -> ApiAccount | None:
    r = db.one("SELECT * FROM api_accounts WHERE client_id = ?", (client_id,))
    return None if r is None else _row(r)


def list_accounts(db: Database) -> list[ApiAccount]:
    return [_row(r) for r in db.all("SELECT * FROM api_accounts ORDER BY id")]


def revoke_account(db: Database, account_id: int) -> bool:
    """Revoke an account and every token it holds; False if there was none to revoke."""
    with db.transaction() as c:
        cur = c.execute(
            "UPDATE api_accounts SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), account_id),
        )
        c.execute("DELETE FROM api_tokens WHERE account_id = ?", (account_id,))
        return cur.rowcount > 0


def authenticate_client(db: Database, client_id: str, secret: str) -> ApiAccount | None:
    """Check client credentials (constant-time whether or not the id exists)."""
    r = db.one("SELECT * FROM api_accounts WHERE client_id = ?", (client_id,))
    ok = verify_password(None if r is None else str(r["secret_hash"]), secret)
    if r is None or not ok:
        return None
    acc = _row(r)
    return acc if acc.active else None


def issue_token(db: Database, account: ApiAccount, now: float | None = None) -> tuple[str, int]:
    """A new bearer token for ``account``: (token, expires_in seconds)."""
    t = time.time() if now is None else now
    token = secrets.token_urlsafe(32)
    db.execute("DELETE FROM api_tokens WHERE expires_at < ?", (t,))
    db.execute(
        "INSERT INTO api_tokens(token_hash, account_id, expires_at) VALUES (?, ?, ?)",
        (token_digest(token), account.id, t + TOKEN_LIFETIME_SECONDS),
    )
    return token, TOKEN_LIFETIME_SECONDS


def account_for_token(db: Database, token: str, now: float | None = None) -> ApiAccount | None:
    """The active account a bearer token belongs to, or None if unknown/expired/revoked."""
    return check_token(db, token, now).account


def check_token(db: Database, token: str, now: float | None = None) -> TokenCheck:
    """Look a bearer token up: valid (with its account), expired, or unknown.

    Expired tokens stay in the table until the next issue sweeps them, which is what lets
    the API tell a client "expired, request a new one" rather than just "unknown".
    """
    t = time.time() if now is None else now
    r = db.one(
        "SELECT a.*, t.expires_at AS token_expires_at FROM api_tokens t "
        "JOIN api_accounts a ON a.id = t.account_id "
        "WHERE t.token_hash = ? AND a.revoked_at IS NULL",
        (token_digest(token),),
    )
    if r is None:
        return TokenCheck(TokenState.UNKNOWN)
    if float(r["token_expires_at"]) <= t:
        return TokenCheck(TokenState.EXPIRED)
    return TokenCheck(TokenState.VALID, _row(r))
