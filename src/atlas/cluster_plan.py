"""What ``atlas cluster apply`` would change: the plan between two cluster documents.

Pure: two :class:`~atlas.model.config.ClusterConfig` in, a :class:`Plan` out. A plan
lists what is added, changed (field by field) and removed, in the guide's words
("traffic node", "primary master node"), so an operator can read it before applying.

Rules:

* Traffic nodes are matched by appliance GUID when both sides have one, otherwise by
  name (ignoring case, as name uniqueness does). An unmatched node on the current side is
  removed, one on the desired side is added. A rename of a node without GUID is therefore
  a removal plus an addition.
* The primary and backup master nodes are matched by their role, not their name.
* ``revision`` is never part of a plan: the store assigns it.
* A plan is empty exactly when the two documents are equal apart from ``revision``
  (tested), so "no changes" means applying would not create a revision.

:func:`carry_guids` fills in the GUIDs a declarative file leaves out (the primary's GUID
is this node's, traffic nodes report theirs): a file that names no GUID keeps the ones
the cluster knows, and that is not a change.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from atlas.model.config import Address, ClusterConfig, MasterNode, TrafficNode

JsonScalar = str | int | float | bool | None
FieldValue = JsonScalar | tuple[str, ...]


class ChangeKind(StrEnum):
    ADD = "add"
    CHANGE = "change"
    REMOVE = "remove"


class Subject(StrEnum):
    """What a change is about, in the guide's words."""

    SITE = "site"
    PRIMARY = "primary master node"
    BACKUP = "backup master node"
    TRAFFIC_NODE = "traffic node"
    TRAFFIC_NODE_ORDER = "traffic node order"
    SELECTION = "selection"
    HEALTH = "health"


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field: ``old`` → ``new`` (None: not set)."""

    field: str
    old: FieldValue
    new: FieldValue


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    subject: Subject
    name: str  # the node's name (the new one when renamed), or the section's name
    fields: tuple[FieldChange, ...] = ()

    def headline(self) -> str:
        """``+ traffic node 'tokyo'``, ``~ selection``, ``- backup master node 'm2'``."""
        sign = {ChangeKind.ADD: "+", ChangeKind.CHANGE: "~", ChangeKind.REMOVE: "-"}[self.kind]
        if self.subject in (Subject.SITE, Subject.SELECTION, Subject.HEALTH,
                            Subject.TRAFFIC_NODE_ORDER):
            return f"{sign} {self.kind.value} {self.subject.value}"
        return f"{sign} {self.kind.value} {self.subject.value} {self.name!r}"


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    def count(self, kind: ChangeKind) -> int:
        return sum(1 for c in self.changes if c.kind is kind)

    def summary(self) -> str:
        """``1 to add, 2 to change, 0 to remove`` or ``no changes``."""
        if self.empty:
            return "no changes"
        return (
            f"{self.count(ChangeKind.ADD)} to add, {self.count(ChangeKind.CHANGE)} to change, "
            f"{self.count(ChangeKind.REMOVE)} to remove"
        )

    def lines(self) -> list[str]:
        """The plan as text, one change per line and one field per indented line."""
        out: list[str] = []
        for change in self.changes:
            out.append(change.headline())
            for f in change.fields:
                if change.kind is ChangeKind.CHANGE:
                    out.append(f"    {f.field}: {show(f.old)} → {show(f.new)}")
                else:
                    out.append(f"    {f.field}: {show(f.new if f.new is not None else f.old)}")
        return out


def show(value: FieldValue) -> str:
    """A field value as the plan prints it."""
    if value is None:
        return "(not set)"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]" if value else "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)


# --- flattening --------------------------------------------------------------------------


def _value(value: object) -> FieldValue:
    if isinstance(value, StrEnum):
        return value.value
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, tuple | list):
        return tuple(str(_value(v)) for v in value)
    return str(value)


def _fields(model: object, names: Mapping[str, object]) -> dict[str, FieldValue]:
    return {name: _value(getattr(model, name)) for name in names}


def flatten(model: MasterNode | TrafficNode | object) -> dict[str, FieldValue]:
    """Field name → printable value, for a node or a settings section."""
    model_fields = getattr(type(model), "model_fields", {})
    return _fields(model, model_fields)


def _diff(old: dict[str, FieldValue], new: dict[str, FieldValue]) -> tuple[FieldChange, ...]:
    keys = list(old) + [k for k in new if k not in old]
    return tuple(
        FieldChange(k, old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)
    )


def _all_fields(model: object) -> tuple[FieldChange, ...]:
    return tuple(FieldChange(k, None, v) for k, v in flatten(model).items() if v is not None)


def _name_key(name: str) -> str:
    return unicodedata.normalize("NFC", name.strip()).casefold()


# --- the plan ----------------------------------------------------------------------------


def _match_traffic_nodes(
    current: tuple[TrafficNode, ...], desired: tuple[TrafficNode, ...]
) -> dict[int, int]:
    """desired index → current index, by GUID first, then by name."""
    matched: dict[int, int] = {}
    taken: set[int] = set()
    by_guid = {n.guid: i for i, n in enumerate(current) if n.guid}
    for d, node in enumerate(desired):
        c = by_guid.get(node.guid) if node.guid else None
        if c is not None and c not in taken:
            matched[d] = c
            taken.add(c)
    by_name = {_name_key(n.name): i for i, n in enumerate(current)}
    for d, node in enumerate(desired):
        if d in matched:
            continue
        c = by_name.get(_name_key(node.name))
        if c is not None and c not in taken:
            matched[d] = c
            taken.add(c)
    return matched


def _master_change(
    subject: Subject, old: MasterNode | None, new: MasterNode | None
) -> Change | None:
    if old is None and new is None:
        return None
    if old is None:
        assert new is not None
        return Change(ChangeKind.ADD, subject, new.name, _all_fields(new))
    if new is None:
        return Change(ChangeKind.REMOVE, subject, old.name)
    fields = _diff(flatten(old), flatten(new))
    return Change(ChangeKind.CHANGE, subject, new.name, fields) if fields else None


def plan(current: ClusterConfig | None, desired: ClusterConfig) -> Plan:
    """Everything that turns ``current`` (None: no cluster yet) into ``desired``."""
    changes: list[Change] = []
    if current is None:
        changes.append(Change(ChangeKind.ADD, Subject.SITE, desired.site_hostname,
                              (FieldChange("site_hostname", None, desired.site_hostname),)))
    elif current.site_hostname != desired.site_hostname:
        changes.append(Change(ChangeKind.CHANGE, Subject.SITE, desired.site_hostname,
                              (FieldChange("site_hostname", current.site_hostname,
                                           desired.site_hostname),)))
    for subject, old_master, new_master in (
        (Subject.PRIMARY, current.primary if current else None, desired.primary),
        (Subject.BACKUP, current.backup if current else None, desired.backup),
    ):
        change = _master_change(subject, old_master, new_master)
        if change is not None:
            changes.append(change)
    for subject, old_section, new_section in (
        (Subject.SELECTION, current.selection if current else None, desired.selection),
        (Subject.HEALTH, current.health if current else None, desired.health),
    ):
        if old_section is None:
            changes.append(Change(ChangeKind.ADD, subject, subject.value,
                                  _all_fields(new_section)))
            continue
        fields = _diff(flatten(old_section), flatten(new_section))
        if fields:
            changes.append(Change(ChangeKind.CHANGE, subject, subject.value, fields))

    old_nodes = current.traffic_nodes if current else ()
    new_nodes = desired.traffic_nodes
    matched = _match_traffic_nodes(old_nodes, new_nodes)
    kept = set(matched.values())
    for c, node in enumerate(old_nodes):
        if c not in kept:
            changes.append(Change(ChangeKind.REMOVE, Subject.TRAFFIC_NODE, node.name))
    for d, node in enumerate(new_nodes):
        was = matched.get(d)
        if was is None:
            changes.append(Change(ChangeKind.ADD, Subject.TRAFFIC_NODE, node.name,
                                  _all_fields(node)))
            continue
        fields = _diff(flatten(old_nodes[was]), flatten(node))
        if fields:
            changes.append(Change(ChangeKind.CHANGE, Subject.TRAFFIC_NODE, node.name, fields))
    old_order = tuple(new_nodes[d].name for d, _ in sorted(matched.items(), key=lambda m: m[1]))
    new_order = tuple(new_nodes[d].name for d in sorted(matched))
    if old_order != new_order:
        changes.append(Change(ChangeKind.CHANGE, Subject.TRAFFIC_NODE_ORDER, "traffic_nodes",
                              (FieldChange("order", old_order, new_order),)))
    return Plan(tuple(changes))


def same_document(a: ClusterConfig | None, b: ClusterConfig | None) -> bool:
    """Equal apart from ``revision``."""
    if a is None or b is None:
        return a is b
    return a.model_copy(update={"revision": 0}) == b.model_copy(update={"revision": 0})


def carry_guids(current: ClusterConfig | None, desired: ClusterConfig) -> ClusterConfig:
    """``desired`` with the GUIDs it leaves out taken from ``current``.

    Masters by role, traffic nodes by name (ignoring case). A GUID already used by
    another node of ``desired`` is not carried (the document would not validate).
    """
    if current is None:
        return desired
    used = {n.guid for n in desired.all_nodes() if n.guid}

    def carried(new: MasterNode | TrafficNode, old: MasterNode | TrafficNode | None) -> str | None:
        if new.guid is not None or old is None or old.guid is None or old.guid in used:
            return None
        used.add(old.guid)
        return old.guid

    update: dict[str, object] = {}
    guid = carried(desired.primary, current.primary)
    if guid is not None:
        update["primary"] = desired.primary.model_copy(update={"guid": guid})
    if desired.backup is not None:
        guid = carried(desired.backup, current.backup)
        if guid is not None:
            update["backup"] = desired.backup.model_copy(update={"guid": guid})
    by_name = {_name_key(n.name): n for n in current.traffic_nodes}
    nodes: list[TrafficNode] = []
    changed = False
    for node in desired.traffic_nodes:
        guid = carried(node, by_name.get(_name_key(node.name)))
        if guid is not None:
            node = node.model_copy(update={"guid": guid})
            changed = True
        nodes.append(node)
    if changed:
        update["traffic_nodes"] = tuple(nodes)
    return desired.model_copy(update=update) if update else desired


__all__ = [
    "Change",
    "ChangeKind",
    "FieldChange",
    "Plan",
    "Subject",
    "carry_guids",
    "flatten",
    "plan",
    "same_document",
    "show",
]
