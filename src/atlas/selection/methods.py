"""The Methods for Choosing Traffic Nodes that pick a node themselves (design section 3).

``random``, ``timezone`` and ``least_loaded`` choose among the viable traffic nodes; the
DNS and anycast methods only hand the client a directive (see ``selector``). Each
function returns the chosen node and the reason in words. All randomness comes from the
``rng`` passed in.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import datetime

from atlas.model.config import TrafficNode
from atlas.model.timezones import TimezoneError, format_offset, offset_minutes
from atlas.selection.health import NodeHealth

MINUTES_PER_DAY = 24 * 60


def utc_offset_minutes(timezone: str, now: datetime) -> int | None:
    """A node's UTC offset at ``now``: ``+09:00`` as is, an IANA zone with its DST.

    ``None`` for text that is neither (the configuration validation refuses it; the
    selection skips such a node rather than fail).
    """
    try:
        return offset_minutes(timezone, now)
    except TimezoneError:
        return None


def circular_distance(a_minutes: int, b_minutes: int) -> int:
    """Distance between two UTC offsets on the 24 h clock (UTC+13 and UTC−11 are 0)."""
    d = (a_minutes - b_minutes) % MINUTES_PER_DAY
    return min(d, MINUTES_PER_DAY - d)


def random_reason(viable_count: int) -> str:
    return f"random among {viable_count} viable"


def choose_random(viable: Sequence[TrafficNode], rng: random.Random) -> tuple[TrafficNode, str]:
    """``random`` — uniform among the viable nodes."""
    return rng.choice(viable), random_reason(len(viable))


def group_by_timezone(viable: Sequence[TrafficNode]) -> dict[str, tuple[TrafficNode, ...]]:
    """Viable nodes per configured Timezone Offset text (configuration order kept)."""
    groups: dict[str, list[TrafficNode]] = {}
    for node in viable:
        groups.setdefault(node.timezone, []).append(node)
    return {tz: tuple(nodes) for tz, nodes in groups.items()}


def _nth(groups: Sequence[tuple[TrafficNode, ...]], index: int) -> TrafficNode:
    """The ``index``-th node of the groups laid end to end."""
    for members in groups:
        if index < len(members):
            return members[index]
        index -= len(members)
    raise IndexError(index)


def choose_by_timezone(
    viable: Sequence[TrafficNode],
    client_offset_minutes: int | None,
    now: datetime,
    rng: random.Random,
    groups: Mapping[str, tuple[TrafficNode, ...]] | None = None,
) -> tuple[TrafficNode, str]:
    """``timezone`` — the viable node whose current UTC offset is closest to the client's.

    Offsets are taken at ``now``, so a node in an IANA zone follows daylight saving
    time. Distance is circular on the 24 h clock; ties are drawn at random. A client
    that reported no offset gets a random viable node. ``groups`` is
    :func:`group_by_timezone` of ``viable``, if the caller keeps it: each distinct zone's
    offset is then computed once per decision instead of once per node.
    """
    if client_offset_minutes is None:
        node, why = choose_random(viable, rng)
        return node, f"timezone: client reported no UTC offset; {why}"
    if groups is None:
        groups = group_by_timezone(viable)
    best: list[tuple[TrafficNode, ...]] = []
    offsets: dict[str, int] = {}
    best_distance = MINUTES_PER_DAY
    for tz, members in groups.items():
        offset = utc_offset_minutes(tz, now)
        if offset is None:
            continue
        offsets[tz] = offset
        distance = circular_distance(offset, client_offset_minutes)
        if distance < best_distance:
            best_distance, best = distance, [members]
        elif distance == best_distance:
            best.append(members)
    if not best:
        node, why = choose_random(viable, rng)
        return node, f"timezone: no viable node has a known UTC offset; {why}"
    tied = sum(len(members) for members in best)
    node = _nth(best, rng.randrange(tied) if tied > 1 else 0)
    shown = format_offset(offsets[node.timezone])
    if node.timezone != shown:
        shown = f"{node.timezone} ({shown})"
    text = f"timezone {shown} closest to client {format_offset(client_offset_minutes)}"
    if tied > 1:
        text += f", random among {tied} tied"
    return node, text


def _load_text(node: TrafficNode, load: int) -> str:
    return f"{node.name} {100 * load // node.capacity}% ({load}/{node.capacity})"


def choose_least_loaded(
    viable: Sequence[TrafficNode],
    health: Mapping[str, NodeHealth],
    rng: random.Random,
) -> tuple[TrafficNode, str]:
    """``least_loaded`` (ours) — power of two choices on load relative to capacity.

    Two distinct viable nodes are drawn at random and the one with the lower
    ``load / capacity`` wins (the first drawn on a tie). This keeps most of the benefit
    of picking the global minimum while avoiding a herd on one node between two health
    checks, when every decision would see the same stale loads.
    """

    def load_of(node: TrafficNode) -> int:
        h = health.get(node.name)
        return 0 if h is None else max(h.load, 0)

    if len(viable) == 1:
        only = viable[0]
        return only, f"least_loaded: only viable node {_load_text(only, load_of(only))}"
    i, j = rng.sample(range(len(viable)), 2)
    a, b = viable[i], viable[j]
    load_a, load_b = load_of(a), load_of(b)
    if load_b * a.capacity < load_a * b.capacity:
        a, b, load_a, load_b = b, a, load_b, load_a
    return a, (
        f"least_loaded {_load_text(a, load_a)} vs {_load_text(b, load_b)} "
        f"(power of two choices among {len(viable)} viable)"
    )
