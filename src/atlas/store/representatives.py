"""Representative accounts: the people who help customers (/login → Users & Security).

Passwords are hashed and throttled exactly like administrators' (argon2id; lockout with
exponential backoff from :mod:`atlas.store.lockout`). Accounts are part of the cluster
configuration the guide syncs ("all configuration data in /login"); the master is where
representatives authenticate.

Every function checks all its input before writing anything: a bad value raises
:class:`RepresentativeError` and leaves the database as it was. Hashing a password is
deliberately slow (tens of milliseconds): callers on an event loop run :func:`create`,
:func:`update` and :func:`authenticate` in a thread.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
import unicodedata
from dataclasses import dataclass, replace

from atlas.store.db import Database
from atlas.store.lockout import after_failure, locked
from atlas.store.passwords import hash_password, password_problem, verify_password

log = logging.getLogger(__name__)

MAX_USERNAME = 64
MAX_DISPLAY_NAME = 100
USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
# Characters a display name must not contain: controls, line/paragraph separators,
# invisible formatting (bidi overrides can make one name look like another), surrogates,
# private-use and unassigned code points. ZWJ/ZWNJ stay allowed: scripts and emoji need them.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_JOINERS = frozenset({"\u200c", "\u200d"})


class RepresentativeError(ValueError):
    """Bad input for a representative account (the caller's fault, nothing was stored).

    ``field`` names the input at fault (``username``, ``display_name``, ``password``,
    ``id``); ``message`` is what is wrong, worded to follow the field's name
    ("must not be empty", "is already taken"), so the web form can say "The username is
    already taken." and the command line "--username is already taken".
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Representative:
    """One account, without its password hash (so it never ends up in a page or a log)."""

    id: int
    username: str
    display_name: str
    enabled: bool
    created_at: float
    failed_logins: int
    locked_until: float

    def locked(self, now: float) -> bool:
        return locked(self.locked_until, now)


def _row(r: sqlite3.Row) -> Representative:
    return Representative(
        id=int(r["id"]), username=str(r["username"]), display_name=str(r["display_name"]),
        enabled=bool(r["enabled"]), created_at=float(r["created_at"]),
        failed_logins=int(r["failed_logins"]), locked_until=float(r["locked_until"]),
    )


# --- checks: each returns the value to store or raises RepresentativeError ----------------


def check_username(username: str) -> str:
    u = username.strip()
    if not u:
        raise RepresentativeError("username", "must not be empty")
    if len(u) > MAX_USERNAME:
        raise RepresentativeError("username", f"must be at most {MAX_USERNAME} characters")
    if not USERNAME_RE.fullmatch(u):
        raise RepresentativeError(
            "username",
            "may contain only letters, digits and . _ @ - and must start with a letter or digit",
        )
    return u


def check_display_name(display_name: str) -> str:
    d = display_name.strip()
    if not d:
        raise RepresentativeError("display_name", "must not be empty")
    if len(d) > MAX_DISPLAY_NAME:
        raise RepresentativeError(
            "display_name", f"must be at most {MAX_DISPLAY_NAME} characters"
        )
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES and c not in _JOINERS for c in d):
        raise RepresentativeError(
            "display_name", "must not contain control or invisible formatting characters"
        )
    return d


def check_password(password: str) -> str:
    if problem := password_problem(password):
        raise RepresentativeError("password", problem)
    return password


# --- reading -------------------------------------------------------------------------


def get(db: Database, rep_id: int) -> Representative | None:
    r = db.one("SELECT * FROM representatives WHERE id = ?", (rep_id,))
    return None if r is None else _row(r)


def get_by_username(db: Database, username: str) -> Representative | None:
    """The account named ``username`` (case-insensitive: the column is ``COLLATE NOCASE``)."""
    u = username.strip()
    if len(u) > MAX_USERNAME:
        return None
    r = db.one("SELECT * FROM representatives WHERE username = ?", (u,))
    return None if r is None else _row(r)


def list_all(db: Database) -> list[Representative]:
    return [_row(r) for r in db.all("SELECT * FROM representatives ORDER BY username")]


# --- writing -------------------------------------------------------------------------


def create(db: Database, username: str, display_name: str, password: str) -> Representative:
    """Add an enabled account; usernames are unique regardless of case."""
    u, d, p = check_username(username), check_display_name(display_name), check_password(password)
    if get_by_username(db, u) is not None:
        raise RepresentativeError("username", "is already taken")
    try:
        cur = db.execute(
            "INSERT INTO representatives(username, display_name, password_hash, created_at) "
            "VALUES (?, ?, ?, ?)",
            (u, d, hash_password(p), time.time()),
        )
    except sqlite3.IntegrityError:  # created by someone else since the check above
        raise RepresentativeError("username", "is already taken") from None
    rep = get(db, int(cur.lastrowid or 0))
    assert rep is not None
    return rep


def update(
    db: Database,
    rep_id: int,
    *,
    display_name: str | None = None,
    password: str | None = None,
    enabled: bool | None = None,
) -> Representative:
    """Change the given fields (all checked first; nothing stored on a bad value).

    A new password also clears the account's failed logins and lock.
    """
    d = check_display_name(display_name) if display_name is not None else None
    p = check_password(password) if password is not None else None
    new_hash = hash_password(p) if p is not None else None
    with db.transaction() as c:
        if c.execute("SELECT 1 FROM representatives WHERE id = ?", (rep_id,)).fetchone() is None:
            raise RepresentativeError("id", f"{rep_id} is not a representative")
        if d is not None:
            c.execute("UPDATE representatives SET display_name = ? WHERE id = ?", (d, rep_id))
        if new_hash is not None:
            c.execute(
                "UPDATE representatives SET password_hash = ?, failed_logins = 0, "
                "locked_until = 0 WHERE id = ?",
                (new_hash, rep_id),
            )
        if enabled is not None:
            c.execute(
                "UPDATE representatives SET enabled = ? WHERE id = ?", (int(enabled), rep_id)
            )
    rep = get(db, rep_id)
    assert rep is not None
    return rep


# --- signing in ----------------------------------------------------------------------


def authenticate(db: Database, username: str, password: str, now: float) -> Representative | None:
    """Check a representative's password with the administrators' lockout rules.

    Returns the account, or None for a wrong password, an unknown or disabled account, or
    a locked one — callers say the same thing in every case. A hash is always checked, so
    the time taken does not tell whether the name exists. Wrong passwords count towards
    the lock (:mod:`atlas.store.lockout`) only while the account is enabled and unlocked.
    """
    u = username.strip()
    r = db.one("SELECT * FROM representatives WHERE username = ?", (u,)) if (
        len(u) <= MAX_USERNAME) else None
    ok = verify_password(None if r is None else str(r["password_hash"]), password)
    rep = None if r is None else _row(r)
    if rep is None or not rep.enabled or rep.locked(now):
        return None
    if not ok:
        with db.transaction() as c:
            row = c.execute(
                "SELECT failed_logins FROM representatives WHERE id = ?", (rep.id,)
            ).fetchone()
            after = after_failure(int(row["failed_logins"]) if row else 0, now)
            c.execute(
                "UPDATE representatives SET failed_logins = ?, locked_until = ? WHERE id = ?",
                (after.failures, after.locked_until, rep.id),
            )
        if after.locked_until:
            log.warning(
                "representative account locked after failed logins",
                extra={"representative": rep.username, "failures": after.failures,
                       "seconds": round(after.locked_until - now)},
            )
        return None
    if rep.failed_logins or rep.locked_until:
        db.execute(
            "UPDATE representatives SET failed_logins = 0, locked_until = 0 WHERE id = ?",
            (rep.id,),
        )
        rep = replace(rep, failed_logins=0, locked_until=0.0)
    return rep
