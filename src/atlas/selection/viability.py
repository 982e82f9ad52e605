"""Which traffic nodes may be chosen at all (design section 3, rule 1).

A traffic node is *viable* when it is accepting new client connections, online (its
last health check succeeded within the health timeout), runs the master's software
version and has completed a data sync. A node that fails several tests is counted under
the first one, in that order, so the counts in an explanation add up to the number of
non-viable nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from atlas.model.config import ClusterConfig
from atlas.selection.health import NodeHealth


class NotViable(StrEnum):
    """Why a traffic node cannot be chosen (in the order they are tested)."""

    NOT_ACCEPTING = "not accepting"
    OFFLINE = "offline"
    SOFTWARE_MISMATCH = "software mismatch"
    NOT_SYNCED = "not synced"


@dataclass(frozen=True, slots=True)
class Viability:
    """The viable traffic nodes for one configuration, health snapshot and moment.

    ``viable`` keeps configuration order (so seeded random draws are reproducible).
    ``valid_until`` is the epoch time at which a viable node's last successful health
    check becomes older than the health timeout, ``None`` if no viable node can go
    stale; until then the same inputs give the same result.
    """

    viable: tuple[str, ...]
    viable_set: frozenset[str]
    not_viable: Mapping[str, NotViable]
    valid_until: float | None

    def counts(self) -> dict[NotViable, int]:
        """Non-viable nodes per reason, in the order the reasons are tested."""
        out = dict.fromkeys(NotViable, 0)
        for why in self.not_viable.values():
            out[why] += 1
        return {why: n for why, n in out.items() if n}

    def describe_not_viable(self) -> str:
        """``2 not accepting, 1 offline`` (empty when every node is viable)."""
        return ", ".join(f"{n} {why.value}" for why, n in self.counts().items())


def _why_not(
    accepting: bool,
    health: NodeHealth | None,
    master_version: str,
    now_ts: float,
    timeout: float,
) -> NotViable | None:
    if not accepting:
        return NotViable.NOT_ACCEPTING
    if health is None or not health.online:
        return NotViable.OFFLINE
    if health.last_seen is not None and now_ts - health.last_seen > timeout:
        return NotViable.OFFLINE
    if health.software_version != master_version:
        return NotViable.SOFTWARE_MISMATCH
    if not health.synced:
        return NotViable.NOT_SYNCED
    return None


def assess_viability(
    config: ClusterConfig,
    health: Mapping[str, NodeHealth],
    master_version: str,
    now: datetime,
) -> Viability:
    """Sort the configured traffic nodes into viable and not (with the reason).

    A node missing from ``health`` has never answered a health check: offline.
    """
    now_ts = now.timestamp()
    timeout = config.health.timeout_seconds
    viable: list[str] = []
    not_viable: dict[str, NotViable] = {}
    valid_until: float | None = None
    for node in config.traffic_nodes:
        h = health.get(node.name)
        why = _why_not(node.accepting, h, master_version, now_ts, timeout)
        if why is not None:
            not_viable[node.name] = why
            continue
        viable.append(node.name)
        if h is not None and h.last_seen is not None:
            stale_at = h.last_seen + timeout
            valid_until = stale_at if valid_until is None else min(valid_until, stale_at)
    return Viability(tuple(viable), frozenset(viable), not_viable, valid_until)
