"""The Inter-appliance Communication Pre-shared Key of a node: its rules and storage.

Guide: "Enter a secure password into the Inter-appliance Communication Pre-shared Key
field. This password must match among all nodes." Set in /login → Management → Security
or with ``atlas psk set DATA_DIR``; both use this module. The key is a 0600 file in the
data directory's secrets (``Node.psk`` reads it at each use, so a running node takes a
new key at once); the change time goes to ``settings``; logs record the fact, never the
value.
"""

from __future__ import annotations

import logging

from atlas.node.datadir import DataDir
from atlas.store.db import Database

log = logging.getLogger("atlas.node")

PSK_MIN = 12
PSK_MAX = 256
CHANGED_SETTING = "psk_changed_at"


def psk_problem(psk: str) -> str | None:
    """Why ``psk`` cannot be the pre-shared key, or None."""
    if not psk:
        return "Enter the pre-shared key."
    if len(psk) < PSK_MIN:
        return f"The pre-shared key must be at least {PSK_MIN} characters long."
    if len(psk) > PSK_MAX:
        return f"The pre-shared key must be at most {PSK_MAX} characters long."
    if any(not c.isprintable() for c in psk):
        return "The pre-shared key must not contain control characters such as line breaks."
    return None


PSK_SECRET = "psk"  # noqa: S105 - the secret file's name


def save_psk(datadir: DataDir, db: Database, psk: str, now: float, by: str) -> None:
    """Store ``psk`` (checked by the caller with :func:`psk_problem`) and when, by whom."""
    datadir.write_secret(PSK_SECRET, psk.encode())
    db.set_setting(CHANGED_SETTING, repr(now))
    log.info("inter-appliance pre-shared key changed", extra={"admin": by})


def psk_is_set(datadir: DataDir) -> bool:
    return bool(datadir.read_secret(PSK_SECRET))


def psk_changed_at(db: Database) -> float | None:
    raw = db.get_setting(CHANGED_SETTING)
    try:
        return float(raw) if raw else None
    except ValueError:
        return None
