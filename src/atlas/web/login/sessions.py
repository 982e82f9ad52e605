"""/login sessions: an unguessable cookie, stored only as its digest in ``web_sessions``.

A session ends after 30 minutes without a request (idle) or 12 hours after login
(absolute), whichever comes first, and at logout. ``expires_at`` holds the idle deadline
capped by the absolute one; each request that finds the session alive slides it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from aiohttp import web

from atlas.store.db import Database
from atlas.store.passwords import token_digest

COOKIE = "atlas_session"
IDLE_TIMEOUT = 30 * 60.0
ABSOLUTE_TIMEOUT = 12 * 3600.0
MAX_TOKEN_LENGTH = 128



def set_cookie(response: web.StreamResponse, token: str) -> None:
    """``atlas_session``: Secure, HttpOnly, SameSite=Strict, path /, ends with the browser."""
    response.set_cookie(COOKIE, token, path="/", secure=True, httponly=True, samesite="Strict")


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")


@dataclass(frozen=True)
class WebSession:
    token_hash: str
    admin_id: int
    username: str
    csrf_token: str
    created_at: float
    expires_at: float


def next_expiry(created_at: float, now: float) -> float:
    """The deadline after a request at ``now``: idle timeout, capped by the absolute one."""
    return min(now + IDLE_TIMEOUT, created_at + ABSOLUTE_TIMEOUT)


def alive(created_at: float, expires_at: float, now: float) -> bool:
    return now < expires_at and now < created_at + ABSOLUTE_TIMEOUT


def create(db: Database, admin_id: int, now: float) -> tuple[str, WebSession]:
    """A new session for ``admin_id``: (cookie value, session). Expired rows are purged."""
    token = secrets.token_urlsafe(32)
    csrf_token = secrets.token_urlsafe(32)
    digest = token_digest(token)
    with db.transaction() as c:
        c.execute("DELETE FROM web_sessions WHERE expires_at <= ?", (now,))
        c.execute(
            "INSERT INTO web_sessions(token_hash, admin_id, csrf_token, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (digest, admin_id, csrf_token, now, next_expiry(now, now)),
        )
        row = c.execute("SELECT username FROM admins WHERE id = ?", (admin_id,)).fetchone()
    username = str(row["username"]) if row else ""
    return token, WebSession(digest, admin_id, username, csrf_token, now, next_expiry(now, now))


def lookup(db: Database, token: str | None, now: float) -> WebSession | None:
    """The live session behind a cookie value, its idle deadline slid; None otherwise.

    A session found expired is deleted.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    digest = token_digest(token)
    row = db.one(
        "SELECT s.*, a.username FROM web_sessions s JOIN admins a ON a.id = s.admin_id "
        "WHERE s.token_hash = ?",
        (digest,),
    )
    if row is None:
        return None
    created, expires = float(row["created_at"]), float(row["expires_at"])
    if not alive(created, expires, now):
        delete(db, digest)
        return None
    new_expiry = next_expiry(created, now)
    db.execute("UPDATE web_sessions SET expires_at = ? WHERE token_hash = ?", (new_expiry, digest))
    return WebSession(
        digest, int(row["admin_id"]), str(row["username"]), str(row["csrf_token"]),
        created, new_expiry,
    )


def delete(db: Database, token_hash: str) -> None:
    db.execute("DELETE FROM web_sessions WHERE token_hash = ?", (token_hash,))


def delete_others(db: Database, admin_id: int, keep_hash: str) -> int:
    """End every other session of ``admin_id`` (after a password change); how many."""
    cur = db.execute(
        "DELETE FROM web_sessions WHERE admin_id = ? AND token_hash != ?", (admin_id, keep_hash)
    )
    return cur.rowcount
