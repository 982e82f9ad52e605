"""The cluster Status History (guide: "Check the Status History table").

Rows are (time, status code, message); status 0 is success, anything else a failure,
as in the guide's table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from atlas.store.db import Database

OK = 0
FAILED = 1


@dataclass(frozen=True)
class HistoryRow:
    id: int
    at: float
    status: int
    message: str


def record(db: Database, message: str, status: int = OK, at: float | None = None) -> None:
    db.execute(
        "INSERT INTO status_history(at, status, message) VALUES (?, ?, ?)",
        (time.time() if at is None else at, status, message),
    )


def recent(db: Database, limit: int = 100) -> list[HistoryRow]:
    """Newest first, as the guide's table shows them."""
    rows = db.all(
        "SELECT id, at, status, message FROM status_history ORDER BY id DESC LIMIT ?", (limit,)
    )
    return [HistoryRow(r["id"], r["at"], r["status"], r["message"]) for r in rows]
