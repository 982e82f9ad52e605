"""A node's role in the cluster, and every way it may change: the table is here.

Rules (guide: "Configure the Primary Master Node", "Perform a … Data-Sync",
"Disable Cluster"; design section 1):

* Every node starts ``standalone``.
* ``standalone`` → ``primary``: the operator creates a new cluster on this node.
* ``standalone`` → ``traffic``: the first data sync accepted from a master that holds the
  same PSK (the request's signature proved that) makes the node a traffic node of it.
* ``traffic`` → ``traffic``: later data syncs from its master.
* ``traffic`` → ``standalone``: its master's Disable Cluster notice, or the operator
  removing the node from the cluster by hand when the notice could not reach it.
* ``primary`` → ``standalone``: Disable Cluster on the primary.
* Anything else is refused, e.g. a master does not accept a data sync, and a node in a
  cluster cannot create another one. Failover (``backup``, Become Primary) adds its
  transitions here when it is built.

Everything that affects the role goes through :func:`transition`; the role and the
master's identity are kept in the node's settings so they survive restarts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum

from atlas.store.db import Database

ROLE_KEY = "cluster.role"
MASTER_KEY = "cluster.master"
MEMBER_NAME_KEY = "cluster.member_name"


class Role(StrEnum):
    STANDALONE = "standalone"
    PRIMARY = "primary"
    BACKUP = "backup"
    TRAFFIC = "traffic"


class RoleEvent(StrEnum):
    CREATE_CLUSTER = "create cluster"  # operator, on this node
    ACCEPT_SYNC = "accept data sync"  # a master's data sync, PSK verified
    DISABLE_NOTICE = "disable notice"  # the master's Disable Cluster notice
    LEAVE_CLUSTER = "leave cluster"  # operator removes this traffic node by hand
    DISABLE_CLUSTER = "disable cluster"  # operator, on the primary


TRANSITIONS: dict[tuple[Role, RoleEvent], Role] = {
    (Role.STANDALONE, RoleEvent.CREATE_CLUSTER): Role.PRIMARY,
    (Role.STANDALONE, RoleEvent.ACCEPT_SYNC): Role.TRAFFIC,
    (Role.TRAFFIC, RoleEvent.ACCEPT_SYNC): Role.TRAFFIC,
    (Role.TRAFFIC, RoleEvent.DISABLE_NOTICE): Role.STANDALONE,
    (Role.TRAFFIC, RoleEvent.LEAVE_CLUSTER): Role.STANDALONE,
    (Role.PRIMARY, RoleEvent.DISABLE_CLUSTER): Role.STANDALONE,
}


class RoleTransitionError(Exception):
    """The event is not allowed in the node's current role (see :data:`TRANSITIONS`)."""

    def __init__(self, role: Role, event: RoleEvent) -> None:
        self.role = role
        self.event = event
        super().__init__(f"a {role.value} node cannot {event.value}")


class WrongRole(Exception):
    """An operation that needs another role than the node's (e.g. Sync Now on a traffic
    node); REST maps it to 409."""

    def __init__(self, role: Role, operation: str, needed: str) -> None:
        self.role = role
        self.operation = operation
        super().__init__(f"{operation} needs {needed}; this node is {role.value}")


def require_role(db: Database, operation: str, *wanted: Role) -> Role:
    """The node's role if it is one of ``wanted``; :class:`WrongRole` otherwise."""
    role = current_role(db)
    if role not in wanted:
        needed = " or ".join(f"a {w.value} node" for w in wanted)
        raise WrongRole(role, operation, needed)
    return role


def next_role(role: Role, event: RoleEvent) -> Role:
    """The role after ``event``; :class:`RoleTransitionError` if it is not allowed."""
    try:
        return TRANSITIONS[(role, event)]
    except KeyError:
        raise RoleTransitionError(role, event) from None


def allowed(role: Role, event: RoleEvent) -> bool:
    return (role, event) in TRANSITIONS


@dataclass(frozen=True, slots=True)
class MasterIdentity:
    """The master a node follows (or is): what a traffic node shows on its cluster page."""

    site_hostname: str
    name: str
    guid: str
    internal: str  # host:port

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MasterIdentity:
        d = json.loads(text)
        return cls(str(d["site_hostname"]), str(d["name"]), str(d["guid"]), str(d["internal"]))


def current_role(db: Database) -> Role:
    return Role(db.get_setting(ROLE_KEY) or Role.STANDALONE.value)


def master_identity(db: Database) -> MasterIdentity | None:
    text = db.get_setting(MASTER_KEY)
    return MasterIdentity.from_json(text) if text else None


def member_name(db: Database) -> str | None:
    """This traffic node's name in its master's configuration (it may differ from its
    own node name)."""
    return db.get_setting(MEMBER_NAME_KEY) or None


def transition(
    db: Database,
    event: RoleEvent,
    *,
    master: MasterIdentity | None = None,
    member: str | None = None,
) -> Role:
    """Apply ``event`` and persist the new role.

    Joining or staying in a cluster records ``master`` (and, on a traffic node, its
    configured name ``member``); leaving one forgets them. Call inside the caller's
    transaction when the role must change together with other data.
    """
    new = next_role(current_role(db), event)
    if new is not Role.STANDALONE and master is None:
        raise ValueError(f"{event.value}: the master's identity is required")
    db.set_setting(ROLE_KEY, new.value)
    if new is Role.STANDALONE or master is None:
        db.execute("DELETE FROM settings WHERE key IN (?, ?)", (MASTER_KEY, MEMBER_NAME_KEY))
        return new
    db.set_setting(MASTER_KEY, master.to_json())
    if member is not None:
        db.set_setting(MEMBER_NAME_KEY, member)
    return new


__all__ = [
    "TRANSITIONS",
    "MasterIdentity",
    "Role",
    "RoleEvent",
    "RoleTransitionError",
    "WrongRole",
    "allowed",
    "current_role",
    "master_identity",
    "member_name",
    "next_role",
    "require_role",
    "transition",
]
