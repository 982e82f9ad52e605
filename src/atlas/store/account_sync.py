"""API and representative accounts as data sync carries them (design section 4).

The guide syncs "all configuration data in /login", and that includes the accounts: an
integration's API account must get a token from any traffic node's ``/oauth2/token``
(the guide has operators call ``get_connected_clients`` on each node), and the
representatives are the same people everywhere. The primary master exports its full
account sets into every sync payload; a traffic node replaces its own sets with them,
in the same transaction as the document.

What travels is what a node needs to check a credential, never a credential: API
accounts with their secret's argon2 hash, representatives with their password's argon2
hash. Nothing here logs an account, and errors name fields by position, never a hash.

* :func:`export_accounts` — the master's sets, canonical (sorted by key) and JSON-ready.
* :func:`accounts_digest` — SHA-256 of the canonical export: the master records the
  digest each traffic node acknowledged, and a different current digest raises "sync
  needed" (:func:`atlas.store.config_store.nodes_needing_sync`).
* :func:`parse_accounts` — validates a pushed export (types, sizes, permission names,
  unique keys); :class:`InvalidAccounts` says what is wrong.
* :func:`replace_accounts` — a traffic node takes the master's sets, keyed by
  ``client_id`` and ``username``: changed accounts are updated in place, accounts the
  master no longer has are deleted. Bearer tokens of removed or revoked accounts, or of
  accounts whose secret changed, are deleted; those of unchanged accounts are kept.

Joining a cluster makes the master's accounts authoritative: a standalone node's own API
accounts and representatives are replaced by the master's at its first data sync.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from atlas.store.api_accounts import Permission
from atlas.store.db import Database
from atlas.store.representatives import (
    RepresentativeError,
    check_display_name,
    check_username,
)

MAX_ACCOUNTS = 10_000  # per kind, in one sync
MAX_CLIENT_ID = 64
MAX_API_NAME = 64
MAX_HASH = 512
HASH_PREFIX = "$argon2"


class InvalidAccounts(ValueError):
    """A pushed account set that does not validate (the sender's fault)."""


@dataclass(frozen=True, slots=True)
class SyncedApiAccount:
    client_id: str
    name: str
    secret_hash: str
    permissions: tuple[str, ...]  # sorted permission names
    created_at: float
    revoked_at: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id, "name": self.name, "secret_hash": self.secret_hash,
            "permissions": list(self.permissions), "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class SyncedRepresentative:
    username: str
    display_name: str
    password_hash: str
    enabled: bool
    created_at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "username": self.username, "display_name": self.display_name,
            "password_hash": self.password_hash, "enabled": self.enabled,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class AccountSets:
    """Every API account and representative of a site, sorted by key."""

    api_accounts: tuple[SyncedApiAccount, ...]
    representatives: tuple[SyncedRepresentative, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "api_accounts": [a.as_json() for a in self.api_accounts],
            "representatives": [r.as_json() for r in self.representatives],
        }

    def canonical_json(self) -> str:
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


EMPTY = AccountSets((), ())
EMPTY_DIGEST = EMPTY.digest


# --- the master: export ---------------------------------------------------------------


def export_accounts(db: Database) -> AccountSets:
    """This node's account sets, as the primary master puts them in a sync payload."""
    api = tuple(
        SyncedApiAccount(
            client_id=str(r["client_id"]), name=str(r["name"]),
            secret_hash=str(r["secret_hash"]),
            permissions=tuple(sorted(str(p) for p in json.loads(str(r["permissions"])))),
            created_at=float(r["created_at"]),
            revoked_at=None if r["revoked_at"] is None else float(r["revoked_at"]),
        )
        for r in db.all(
            "SELECT client_id, name, secret_hash, permissions, created_at, revoked_at "
            "FROM api_accounts ORDER BY client_id"
        )
    )
    reps = tuple(
        SyncedRepresentative(
            username=str(r["username"]), display_name=str(r["display_name"]),
            password_hash=str(r["password_hash"]), enabled=bool(r["enabled"]),
            created_at=float(r["created_at"]),
        )
        for r in db.all(
            "SELECT username, display_name, password_hash, enabled, created_at "
            "FROM representatives ORDER BY username COLLATE BINARY"
        )
    )
    return AccountSets(api, reps)


def accounts_digest(db: Database) -> str:
    """SHA-256 of this node's canonical account export (what "sync needed" compares)."""
    return export_accounts(db).digest


# --- a traffic node: validate and import ----------------------------------------------


def _fields(item: Any, where: str, names: frozenset[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidAccounts(f"{where}: must be an object")
    missing = sorted(names - item.keys())
    if missing:
        raise InvalidAccounts(f"{where}: missing {', '.join(missing)}")
    extra = sorted(str(k)[:40] for k in item.keys() - names)
    if extra:
        raise InvalidAccounts(f"{where}: unknown field {extra[0]!r}")
    return item


def _text(value: Any, where: str, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidAccounts(f"{where}: must be a string of 1 to {max_length} characters")
    return value


def _hash(value: Any, where: str) -> str:
    text = _text(value, where, MAX_HASH)
    if not text.startswith(HASH_PREFIX) or not text.isprintable():
        raise InvalidAccounts(f"{where}: is not an argon2 hash")
    return text


def _time(value: Any, where: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value >= 0
    ):
        kind = "a non-negative number" + (" or null" if optional else "")
        raise InvalidAccounts(f"{where}: must be {kind}")
    return float(value)


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise InvalidAccounts(f"{key}: must be a list")
    if len(value) > MAX_ACCOUNTS:
        raise InvalidAccounts(f"{key}: at most {MAX_ACCOUNTS} accounts")
    return value


_API_FIELDS = frozenset(
    {"client_id", "name", "secret_hash", "permissions", "created_at", "revoked_at"}
)
_REP_FIELDS = frozenset(
    {"username", "display_name", "password_hash", "enabled", "created_at"}
)
_PERMISSIONS = frozenset(p.value for p in Permission)


def _api_account(item: Any, where: str) -> SyncedApiAccount:
    data = _fields(item, where, _API_FIELDS)
    client_id = _text(data["client_id"], f"{where}.client_id", MAX_CLIENT_ID)
    if not client_id.isascii() or not client_id.isprintable():
        raise InvalidAccounts(f"{where}.client_id: must be printable ASCII")
    name = _text(data["name"], f"{where}.name", MAX_API_NAME)
    if not name.isprintable():
        raise InvalidAccounts(f"{where}.name: must be printable")
    perms = data["permissions"]
    if not isinstance(perms, list) or not perms or len(perms) > len(_PERMISSIONS):
        raise InvalidAccounts(
            f"{where}.permissions: must be a list of 1 to {len(_PERMISSIONS)} names"
        )
    for p in perms:
        if not isinstance(p, str) or p not in _PERMISSIONS:
            shown = repr(p[:40]) if isinstance(p, str) else "a non-string"
            raise InvalidAccounts(
                f"{where}.permissions: {shown} is unknown; allowed: "
                f"{', '.join(sorted(_PERMISSIONS))}"
            )
    if len(set(perms)) != len(perms):
        raise InvalidAccounts(f"{where}.permissions: listed twice")
    return SyncedApiAccount(
        client_id=client_id, name=name,
        secret_hash=_hash(data["secret_hash"], f"{where}.secret_hash"),
        permissions=tuple(sorted(perms)),
        created_at=_time(data["created_at"], f"{where}.created_at") or 0.0,
        revoked_at=_time(data["revoked_at"], f"{where}.revoked_at", optional=True),
    )


def _representative(item: Any, where: str) -> SyncedRepresentative:
    data = _fields(item, where, _REP_FIELDS)
    for key in ("username", "display_name"):
        if not isinstance(data[key], str):
            raise InvalidAccounts(f"{where}.{key}: must be a string")
    try:
        username = check_username(data["username"])
        display_name = check_display_name(data["display_name"])
    except RepresentativeError as exc:
        raise InvalidAccounts(f"{where}.{exc.field}: {exc.message}") from None
    if username != data["username"] or display_name != data["display_name"]:
        raise InvalidAccounts(f"{where}: names must not have surrounding spaces")
    enabled = data["enabled"]
    if not isinstance(enabled, bool):
        raise InvalidAccounts(f"{where}.enabled: must be true or false")
    return SyncedRepresentative(
        username=username, display_name=display_name,
        password_hash=_hash(data["password_hash"], f"{where}.password_hash"),
        enabled=enabled,
        created_at=_time(data["created_at"], f"{where}.created_at") or 0.0,
    )


def parse_accounts(data: Any) -> AccountSets:
    """Validate the ``accounts`` of a sync payload; :class:`InvalidAccounts` if malformed.

    The message names the first fault by position (``api_accounts.3.permissions: …``)
    and never repeats a hash.
    """
    if not isinstance(data, dict):
        raise InvalidAccounts("must be an object with api_accounts and representatives")
    _fields(data, "accounts", frozenset({"api_accounts", "representatives"}))
    api = [_api_account(item, f"api_accounts.{i}")
           for i, item in enumerate(_list(data, "api_accounts"))]
    reps = [_representative(item, f"representatives.{i}")
            for i, item in enumerate(_list(data, "representatives"))]
    seen: set[str] = set()
    for i, a in enumerate(api):
        if a.client_id in seen:
            raise InvalidAccounts(f"api_accounts.{i}.client_id: listed twice")
        seen.add(a.client_id)
    seen.clear()
    for i, r in enumerate(reps):
        key = r.username.casefold()
        if key in seen:
            raise InvalidAccounts(f"representatives.{i}.username: listed twice")
        seen.add(key)
    return AccountSets(
        tuple(sorted(api, key=lambda a: a.client_id)),
        tuple(sorted(reps, key=lambda r: r.username)),
    )


def replace_accounts(db: Database, accounts: AccountSets) -> None:
    """Make this node's account sets exactly ``accounts``; run inside a transaction.

    The caller holds the transaction (``config_store.apply_synced`` runs this beside the
    document), so a failure anywhere leaves the previous accounts.
    """
    _replace_api_accounts(db, accounts.api_accounts)
    _replace_representatives(db, accounts.representatives)


def _replace_api_accounts(db: Database, accounts: tuple[SyncedApiAccount, ...]) -> None:
    held = {
        str(r["client_id"]): r
        for r in db.all("SELECT id, client_id, secret_hash, revoked_at FROM api_accounts")
    }
    wanted = {a.client_id for a in accounts}
    for client_id, gone in held.items():
        if client_id not in wanted:
            db.execute("DELETE FROM api_tokens WHERE account_id = ?", (gone["id"],))
            db.execute("DELETE FROM api_accounts WHERE id = ?", (gone["id"],))
    for a in accounts:
        permissions = json.dumps(list(a.permissions))
        row = held.get(a.client_id)
        if row is None:
            db.execute(
                "INSERT INTO api_accounts(name, client_id, secret_hash, permissions, "
                "created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?)",
                (a.name, a.client_id, a.secret_hash, permissions, a.created_at, a.revoked_at),
            )
            continue
        if a.revoked_at is not None or str(row["secret_hash"]) != a.secret_hash:
            db.execute("DELETE FROM api_tokens WHERE account_id = ?", (row["id"],))
        db.execute(
            "UPDATE api_accounts SET name = ?, secret_hash = ?, permissions = ?, "
            "created_at = ?, revoked_at = ? WHERE id = ?",
            (a.name, a.secret_hash, permissions, a.created_at, a.revoked_at, row["id"]),
        )


def _replace_representatives(
    db: Database, reps: tuple[SyncedRepresentative, ...]
) -> None:
    held = {
        str(r["username"]).casefold(): r
        for r in db.all("SELECT id, username, password_hash FROM representatives")
    }
    wanted = {r.username.casefold() for r in reps}
    for key, gone in held.items():
        if key not in wanted:
            db.execute("DELETE FROM representatives WHERE id = ?", (gone["id"],))
    for r in reps:
        row = held.get(r.username.casefold())
        if row is None:
            db.execute(
                "INSERT INTO representatives(username, display_name, password_hash, "
                "enabled, created_at) VALUES (?, ?, ?, ?, ?)",
                (r.username, r.display_name, r.password_hash, int(r.enabled), r.created_at),
            )
            continue
        db.execute(
            "UPDATE representatives SET username = ?, display_name = ?, enabled = ?, "
            "created_at = ? WHERE id = ?",
            (r.username, r.display_name, int(r.enabled), r.created_at, row["id"]),
        )
        if str(row["password_hash"]) != r.password_hash:
            # A new password clears the lock, as representatives.update does.
            db.execute(
                "UPDATE representatives SET password_hash = ?, failed_logins = 0, "
                "locked_until = 0 WHERE id = ?",
                (r.password_hash, row["id"]),
            )


__all__ = [
    "EMPTY_DIGEST",
    "MAX_ACCOUNTS",
    "AccountSets",
    "InvalidAccounts",
    "SyncedApiAccount",
    "SyncedRepresentative",
    "accounts_digest",
    "export_accounts",
    "parse_accounts",
    "replace_accounts",
]
