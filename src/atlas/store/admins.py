"""Administrator accounts of /login."""

from __future__ import annotations

import time
from dataclasses import dataclass

from atlas.store.db import Database
from atlas.store.passwords import hash_password


@dataclass(frozen=True)
class Admin:
    id: int
    username: str
    password_hash: str
    failed_logins: int
    locked_until: float


def create_admin(db: Database, username: str, password: str) -> int:
    cur = db.execute(
        "INSERT INTO admins(username, password_hash, created_at) VALUES (?, ?, ?)",
        (username, hash_password(password), time.time()),
    )
    return int(cur.lastrowid or 0)


def get_admin(db: Database, username: str) -> Admin | None:
    r = db.one("SELECT * FROM admins WHERE username = ?", (username,))
    if r is None:
        return None
    return Admin(r["id"], r["username"], r["password_hash"], r["failed_logins"], r["locked_until"])


def set_password(db: Database, admin_id: int, password: str) -> None:
    db.execute(
        "UPDATE admins SET password_hash = ? WHERE id = ?", (hash_password(password), admin_id)
    )
