"""What the master knows about each traffic node's health (design section 4).

The health monitor produces a :class:`HealthSnapshot` after every round of checks; the
selection treats it as read-only input. A new round means a new snapshot object, which
is what lets :class:`~atlas.selection.selector.Selector` cache what it derives from one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """The last health check of one traffic node, as seen by the master.

    ``last_seen`` is the wall-clock time (seconds since the epoch) of the last check
    that succeeded, ``None`` if the monitor does not track it. ``config_revision`` is
    informational: a node that completed a data sync stays viable while the master's
    configuration moves on (the "sync needed" warning covers that case).
    """

    online: bool
    software_version: str
    config_revision: int
    synced: bool
    load: int = 0  # connected clients
    last_seen: float | None = None


class HealthSnapshot(Mapping[str, NodeHealth]):
    """An immutable mapping of traffic node name → :class:`NodeHealth`."""

    __slots__ = ("_nodes",)

    def __init__(self, nodes: Mapping[str, NodeHealth] | None = None) -> None:
        self._nodes: Mapping[str, NodeHealth] = MappingProxyType(dict(nodes or {}))

    def __getitem__(self, name: str) -> NodeHealth:
        return self._nodes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"HealthSnapshot({dict(self._nodes)!r})"
