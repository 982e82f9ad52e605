"""The cluster configuration document, versioned (design section 4).

Every change on the master is saved as a new row of ``config_documents`` with a revision
one above the highest ever stored, so revisions only grow and old ones stay readable
(the history). The *current* document is named by the ``config.current_revision``
setting, not by the highest row: that is what lets Disable Cluster clear the document
while keeping its history, and lets a traffic node hold exactly the revision its master
pushed (a traffic node's rows mirror its master's revision numbers; a row left from an
earlier cluster under the same number is replaced).

On the master, :func:`sync_needed` compares the current revision with what every traffic
node acknowledged (``node_status``, written by :mod:`atlas.node.sync`), and the digest of
the API and representative accounts (:mod:`atlas.store.account_sync`, which data sync
carries beside the document) with the digest each node acknowledged: creating, revoking,
editing, enabling or disabling an account raises "sync needed" for every traffic node
until its next successful sync. Decision on the
Accepting New Client Connections flag (guide: "takes effect at once"): a revision that
changes only one traffic node's ``accepting`` flag is saved as kind ``accepting`` and
is pushed to that node at once through the one-flag fast path; it raises "sync needed"
only for that node, and only until the node confirms it. Every other change is kind
``edit`` and needs a full data sync of every traffic node.

On a traffic node, :func:`apply_synced` stores a pushed document atomically: validation
first, then one transaction that stores the row and moves the pointer. A crash between
the two statements leaves the previous revision current (SQLite rolls the unfinished
transaction back), which ``tests/node/test_config_store.py`` checks by injecting a
failure there and ``tests/integration/test_cluster_sync.py`` by killing the process
there (:data:`FAULT_CRASH_ENV`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

from atlas.model.config import ClusterConfig, TrafficNode
from atlas.model.errors import describe_errors
from atlas.store import account_sync
from atlas.store.db import Database

CURRENT_REVISION_KEY = "config.current_revision"
ACCEPTING_OVERRIDE_KEY = "config.accepting_override"

# Test-only fault injection: with this variable set to "1", :func:`apply_synced` kills
# its own process between its two statements (exit code FAULT_EXIT_CODE).
FAULT_CRASH_ENV = "ATLAS_FAULT_CRASH_MID_APPLY"
FAULT_EXIT_CODE = 70

# Unit tests set this to raise between the statements of apply_synced.
_between_statements: Callable[[], None] | None = None


class RevisionKind(StrEnum):
    EDIT = "edit"  # any change: every traffic node needs a full data sync
    ACCEPTING = "accepting"  # only one traffic node's accepting flag (fast path)
    SYNCED = "synced"  # on a traffic node: a document pushed by its master


class StaleRevision(Exception):
    """The document was edited from an older revision than the current one (REST: 409)."""

    def __init__(self, current: int, expected: int) -> None:
        self.current = current
        self.expected = expected
        super().__init__(
            f"the configuration changed meanwhile: you edited revision {expected}, "
            f"the current one is {current}; reload and apply your change again"
        )


class InvalidDocument(ValueError):
    """A pushed document that does not validate; ``errors`` name the fields."""

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        self.errors = errors or []
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class RevisionInfo:
    revision: int
    kind: RevisionKind
    subject: str | None  # the traffic node of an ``accepting`` revision
    author: str
    created_at: float


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What the master learned about one traffic node from data syncs (``node_status``)."""

    name: str  # as configured on the master
    guid: str | None
    reported_name: str | None  # the node's own name for itself
    version: str | None
    acked_revision: int  # last revision it applied in a full data sync (0: never)
    accepting_revision: int  # last accepting-only revision it confirmed (0: none)
    last_sync_at: float | None
    last_sync_status: int | None  # 0 ok, else failed (status history codes)
    last_error_reason: str | None
    last_error: str | None
    acked_accounts_digest: str | None = None  # accounts it applied in a data sync


# --- reading --------------------------------------------------------------------------


def current_revision(db: Database) -> int:
    """The current document's revision; 0 when there is none (standalone, cleared)."""
    text = db.get_setting(CURRENT_REVISION_KEY)
    return int(text) if text else 0


# Parsed documents by (database, revision), kept while the stored text is unchanged:
# validating a 1,000-node document takes ~60 ms, and the page, the health monitor and
# "sync needed" read the current one often.
_PARSED: dict[tuple[str, int], tuple[str, ClusterConfig]] = {}
_PARSED_MAX = 16


def _parse_stored(db: Database, revision: int, text: str) -> ClusterConfig:
    key = (str(db.path), revision)
    cached = _PARSED.get(key)
    if cached is not None and cached[0] == text:
        return cached[1]
    config = ClusterConfig.model_validate_json(text)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.pop(next(iter(_PARSED)), None)
    _PARSED[key] = (text, config)
    return config


def load_revision(db: Database, revision: int) -> ClusterConfig | None:
    """Any stored revision (history), or None."""
    row = db.one("SELECT document FROM config_documents WHERE revision = ?", (revision,))
    return None if row is None else _parse_stored(db, revision, str(row["document"]))


def load(db: Database) -> ClusterConfig | None:
    """The current cluster configuration, or None when this node is in no cluster.

    On a traffic node, a confirmed fast-path accepting flag newer than the document is
    applied to its entry.
    """
    revision = current_revision(db)
    if not revision:
        return None
    config = load_revision(db, revision)
    if config is None:
        return None
    override = _accepting_override(db)
    if override is not None and override[2] > revision:
        config = _with_accepting(config, override[0], override[1])
    return config


def history(db: Database, limit: int = 100) -> list[RevisionInfo]:
    """Stored revisions, newest first."""
    rows = db.all(
        "SELECT revision, kind, subject, author, created_at FROM config_documents "
        "ORDER BY revision DESC LIMIT ?",
        (limit,),
    )
    return [
        RevisionInfo(
            int(r["revision"]), RevisionKind(r["kind"]), r["subject"], str(r["author"]),
            float(r["created_at"]),
        )
        for r in rows
    ]


# --- the master: edits ----------------------------------------------------------------


def _with_accepting(config: ClusterConfig, name: str, accepting: bool) -> ClusterConfig:
    nodes = tuple(
        n.model_copy(update={"accepting": accepting}) if n.name == name else n
        for n in config.traffic_nodes
    )
    return config.model_copy(update={"traffic_nodes": nodes})


def _only_accepting_changed(old: ClusterConfig, new: ClusterConfig) -> str | None:
    """The name of the one traffic node whose accepting flag is all that changed."""
    if len(old.traffic_nodes) != len(new.traffic_nodes):
        return None
    changed = [
        (a, b) for a, b in zip(old.traffic_nodes, new.traffic_nodes, strict=True) if a != b
    ]
    if len(changed) != 1:
        return None
    a, b = changed[0]
    if a.name != b.name or a.model_copy(update={"accepting": b.accepting}) != b:
        return None
    rest_old = old.model_copy(update={"traffic_nodes": (), "revision": 0})
    rest_new = new.model_copy(update={"traffic_nodes": (), "revision": 0})
    return b.name if rest_old == rest_new else None


def save(
    db: Database,
    config: ClusterConfig,
    *,
    expected_revision: int | None,
    author: str,
    then: Callable[[], object] | None = None,
) -> ClusterConfig:
    """Store ``config`` as the new current revision (one above the highest stored).

    ``expected_revision`` is the revision the editor started from (0: no document yet);
    when given and no longer current, :class:`StaleRevision` is raised and nothing is
    stored. The returned document carries its new revision. ``then`` runs in the same
    transaction (e.g. the role change of Create New Cluster).
    """
    with db.transaction() as conn:
        current = current_revision(db)
        if expected_revision is not None and expected_revision != current:
            raise StaleRevision(current, expected_revision)
        row = conn.execute("SELECT COALESCE(MAX(revision), 0) FROM config_documents").fetchone()
        revision = int(row[0]) + 1
        previous = load_revision(db, current) if current else None
        subject = _only_accepting_changed(previous, config) if previous is not None else None
        kind = RevisionKind.ACCEPTING if subject is not None else RevisionKind.EDIT
        stored = config.model_copy(update={"revision": revision})
        conn.execute(
            "INSERT INTO config_documents(revision, document, created_at, author, kind, "
            "subject) VALUES (?, ?, ?, ?, ?, ?)",
            (revision, stored.canonical_json(), time.time(), author, kind.value, subject),
        )
        db.set_setting(CURRENT_REVISION_KEY, str(revision))
        if then is not None:
            then()
    return stored


def clear(db: Database, *, then: Callable[[], object] | None = None) -> None:
    """Forget the current document (Disable Cluster); stored revisions stay as history.

    ``then`` runs in the same transaction (e.g. the role change).
    """
    with db.transaction():
        db.execute("DELETE FROM settings WHERE key IN (?, ?)",
                   (CURRENT_REVISION_KEY, ACCEPTING_OVERRIDE_KEY))
        if then is not None:
            then()


# --- the master: what the traffic nodes hold ------------------------------------------


def _status_row(r: object) -> NodeStatus:
    row: dict[str, object] = dict(r)  # type: ignore[call-overload]

    def opt_str(key: str) -> str | None:
        v = row[key]
        return None if v is None else str(v)

    at, status = row["last_sync_at"], row["last_sync_status"]
    return NodeStatus(
        name=str(row["name"]),
        guid=opt_str("guid"),
        reported_name=opt_str("reported_name"),
        version=opt_str("version"),
        acked_revision=int(row["acked_revision"]),  # type: ignore[call-overload]
        accepting_revision=int(row["accepting_revision"]),  # type: ignore[call-overload]
        last_sync_at=None if at is None else float(at),  # type: ignore[arg-type]
        last_sync_status=None if status is None else int(status),  # type: ignore[call-overload]
        last_error_reason=opt_str("last_error_reason"),
        last_error=opt_str("last_error"),
        acked_accounts_digest=opt_str("acked_accounts_digest"),
    )


def node_statuses(db: Database) -> dict[str, NodeStatus]:
    """Every traffic node the master has tried to sync, by configured name."""
    return {s.name: s for s in map(_status_row, db.all("SELECT * FROM node_status"))}


def record_ack(
    db: Database, name: str, *, revision: int, guid: str, reported_name: str, version: str,
    at: float | None = None, accounts_digest: str | None = None,
) -> None:
    """A traffic node applied ``revision`` (and the accounts of ``accounts_digest``, when
    given) in a full data sync."""
    db.execute(
        "INSERT INTO node_status(name, guid, reported_name, version, acked_revision, "
        "last_sync_at, last_sync_status, acked_accounts_digest) "
        "VALUES (?, ?, ?, ?, ?, ?, 0, ?) "
        "ON CONFLICT(name) DO UPDATE SET guid = excluded.guid, "
        "reported_name = excluded.reported_name, version = excluded.version, "
        "acked_revision = MAX(acked_revision, excluded.acked_revision), "
        "last_sync_at = excluded.last_sync_at, last_sync_status = 0, "
        "last_error_reason = NULL, last_error = NULL, "
        "acked_accounts_digest = COALESCE(excluded.acked_accounts_digest, "
        "acked_accounts_digest)",
        (name, guid, reported_name, version, revision, time.time() if at is None else at,
         accounts_digest),
    )


def record_sync_failure(
    db: Database, name: str, *, reason: str, message: str, status: int = 1,
    version: str | None = None, at: float | None = None,
) -> None:
    """A data sync of traffic node ``name`` failed; its acknowledged revision stays."""
    db.execute(
        "INSERT INTO node_status(name, version, last_sync_at, last_sync_status, "
        "last_error_reason, last_error) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET version = COALESCE(excluded.version, version), "
        "last_sync_at = excluded.last_sync_at, last_sync_status = excluded.last_sync_status, "
        "last_error_reason = excluded.last_error_reason, last_error = excluded.last_error",
        (name, version, time.time() if at is None else at, status, reason, message),
    )


def record_accepting_ack(db: Database, name: str, revision: int) -> None:
    """Traffic node ``name`` confirmed the accepting flag of ``revision`` (fast path)."""
    db.execute(
        "INSERT INTO node_status(name, accepting_revision) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET "
        "accepting_revision = MAX(accepting_revision, excluded.accepting_revision)",
        (name, revision),
    )


def forget_node_statuses(db: Database) -> None:
    db.execute("DELETE FROM node_status")


def nodes_needing_sync(db: Database) -> list[str]:
    """Configured traffic nodes that do not hold everything they need, in config order.

    A node needs a sync when an ``edit`` revision newer than its acknowledged one exists,
    or an ``accepting`` revision about it newer than both its acknowledged revision and
    the last flag it confirmed, or the accounts changed since it last acknowledged them
    (a node with no digest recorded is taken to hold no accounts).
    """
    config = load(db)
    if config is None or not config.traffic_nodes:
        return []
    current = config.revision
    statuses = node_statuses(db)
    acks = {n.name: statuses.get(n.name) for n in config.traffic_nodes}
    floor = min((s.acked_revision if s else 0) for s in acks.values())
    changes = db.all(
        "SELECT revision, kind, subject FROM config_documents "
        "WHERE revision > ? AND revision <= ? ORDER BY revision",
        (floor, current),
    )
    accounts = account_sync.accounts_digest(db)
    out: list[str] = []
    for node in config.traffic_nodes:
        status = acks[node.name]
        acked = status.acked_revision if status else 0
        acked_accounts = (status.acked_accounts_digest if status else None) or (
            account_sync.EMPTY_DIGEST
        )
        if acked_accounts != accounts:
            out.append(node.name)
            continue
        flag_acked = max(acked, status.accepting_revision if status else 0)
        for change in changes:
            revision = int(change["revision"])
            if revision <= acked:
                continue
            if change["kind"] != RevisionKind.ACCEPTING or (
                change["subject"] == node.name and revision > flag_acked
            ):
                out.append(node.name)
                break
    return out


def sync_needed(db: Database) -> bool:
    """The "sync needed" warning of /login: some traffic node lacks the latest changes."""
    return bool(nodes_needing_sync(db))


# --- a traffic node: documents pushed by the master -----------------------------------


def parse_pushed(document_json: str, revision: int) -> ClusterConfig:
    """Validate a pushed document; :class:`InvalidDocument` says what is wrong."""
    try:
        config = ClusterConfig.model_validate_json(document_json)
    except ValidationError as exc:
        errors = describe_errors(exc)
        first = errors[0] if errors else {"field": "", "message": str(exc)}
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        where = f"{first['field']}: " if first["field"] else ""
        raise InvalidDocument(
            f"{where}{first['message']}{more}",
            [{"field": e["field"], "message": e["message"]} for e in errors],
        ) from None
    if config.revision != revision:
        raise InvalidDocument(
            f"the document says revision {config.revision} but was sent as revision {revision}"
        )
    return config


def _fault_point() -> None:
    if _between_statements is not None:
        _between_statements()
    if os.environ.get(FAULT_CRASH_ENV) == "1":
        os._exit(FAULT_EXIT_CODE)


def apply_synced(
    db: Database,
    document_json: str,
    revision: int,
    *,
    then: Callable[[], object] | None = None,
    author: str = "data sync",
    parsed: ClusterConfig | None = None,
    accounts: account_sync.AccountSets | None = None,
) -> ClusterConfig:
    """Make a document pushed by the master current, atomically or not at all.

    Validates first (:class:`InvalidDocument`); then one transaction stores the row,
    replaces the accounts with ``accounts`` (the master's sets, already validated with
    :func:`account_sync.parse_accounts`; None leaves them), moves the current pointer,
    drops an accepting flag the document supersedes, and runs ``then`` (e.g. the role
    change), so a failure or crash anywhere leaves the previous revision and the
    previous accounts. ``parsed`` skips validating again a document the caller already
    checked with :func:`parse_pushed`.
    """
    config = parsed if parsed is not None else parse_pushed(document_json, revision)
    if config.revision != revision:
        raise InvalidDocument(f"document revision {config.revision} is not {revision}")
    text = config.canonical_json()
    with db.transaction() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO config_documents(revision, document, created_at, author, "
            "kind, subject) VALUES (?, ?, ?, ?, ?, NULL)",
            (revision, text, time.time(), author, RevisionKind.SYNCED.value),
        )
        if accounts is not None:
            account_sync.replace_accounts(db, accounts)
        _fault_point()
        db.set_setting(CURRENT_REVISION_KEY, str(revision))
        override = _accepting_override(db)
        if override is not None and override[2] <= revision:
            db.execute("DELETE FROM settings WHERE key = ?", (ACCEPTING_OVERRIDE_KEY,))
        if then is not None:
            then()
    return config


def _accepting_override(db: Database) -> tuple[str, bool, int] | None:
    text = db.get_setting(ACCEPTING_OVERRIDE_KEY)
    if not text:
        return None
    data = json.loads(text)
    return str(data["name"]), bool(data["accepting"]), int(data["revision"])


def apply_accepting(db: Database, name: str, accepting: bool, revision: int) -> ClusterConfig:
    """On a traffic node: take the master's accepting flag for ``name`` (fast path).

    The flag is kept beside the document and applied by :func:`load` until a full sync
    brings a document of ``revision`` or later. Raises LookupError when there is no
    document or it has no traffic node ``name``.
    """
    with db.transaction():
        config = load(db)
        if config is None:
            raise LookupError("this node holds no cluster configuration")
        if _find_traffic_node(config, name) is None:
            raise LookupError(f"the cluster configuration has no traffic node {name!r}")
        override = _accepting_override(db)
        if override is None or override[2] <= revision:
            db.set_setting(
                ACCEPTING_OVERRIDE_KEY,
                json.dumps({"name": name, "accepting": accepting, "revision": revision}),
            )
        result = load(db)
    assert result is not None
    return result


def _find_traffic_node(config: ClusterConfig, name: str) -> TrafficNode | None:
    return next((n for n in config.traffic_nodes if n.name == name), None)


__all__ = [
    "FAULT_CRASH_ENV",
    "InvalidDocument",
    "NodeStatus",
    "RevisionInfo",
    "RevisionKind",
    "StaleRevision",
    "apply_accepting",
    "apply_synced",
    "clear",
    "current_revision",
    "history",
    "load",
    "load_revision",
    "node_statuses",
    "nodes_needing_sync",
    "record_accepting_ack",
    "record_ack",
    "record_sync_failure",
    "save",
    "sync_needed",
]
