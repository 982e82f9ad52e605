"""Choosing a client's home traffic node (design section 3): the whole rule set.

1. Only *viable* traffic nodes count (``viability``).
2. Network prefixes override the method: longest match among viable nodes, ties at
   random (``prefixes``).
3. Otherwise ``selection.method`` decides (``methods`` for random / timezone /
   least_loaded; the DNS and anycast methods return a directive for the client).
4. No viable node → :class:`~atlas.selection.decision.FallbackWanted`, which
   :func:`~atlas.selection.fallback.admit` turns into the master or a retry hint.

:func:`select_traffic_node` is the pure function. :class:`Selector` is the same
function with the prefix index kept per configuration revision and the viability kept
per health snapshot, which is what the master's broker and the route endpoint use.
Neither does I/O or reads a clock or the global random generator: ``now`` and ``rng``
are passed in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from atlas.model.config import ClusterConfig, SelectionMethod, TrafficNode
from atlas.selection.client import ClientFacts
from atlas.selection.decision import (
    AnycastDirective,
    ARecordDirective,
    FallbackWanted,
    NodeChosen,
    Routing,
    Rule,
    Selection,
    SrvDirective,
)
from atlas.selection.fallback import MasterFallback, admit
from atlas.selection.health import HealthSnapshot, NodeHealth
from atlas.selection.methods import (
    choose_by_timezone,
    choose_least_loaded,
    choose_random,
    group_by_timezone,
    random_reason,
)
from atlas.selection.prefixes import PrefixIndex, PrefixMatch
from atlas.selection.viability import Viability, assess_viability


class _Choices:
    """What the rules decide for a given viable set, kept while that set stays the same.

    Decisions are immutable values, so the prefix rule's decision for a longest
    containing prefix (one per tied node) and the ``random`` method's decision per node
    are built once and handed out again (and the viable nodes grouped by timezone for
    the ``timezone`` method); a health round that changes no node's viability keeps
    them. Filled lazily; only ever grows up to the number of
    configured prefixes.
    """

    __slots__ = (
        "nodes", "prefix_decisions", "random_decisions", "timezone_groups", "viable",
        "viable_set",
    )

    def __init__(self, viable: tuple[str, ...], by_name: Mapping[str, TrafficNode]) -> None:
        self.viable = viable
        self.viable_set = frozenset(viable)
        self.nodes = tuple(by_name[name] for name in viable)
        self.prefix_decisions: dict[str, tuple[NodeChosen, ...] | None] = {}
        self.random_decisions: tuple[NodeChosen, ...] = ()
        self.timezone_groups: dict[str, tuple[TrafficNode, ...]] | None = None


@dataclass(frozen=True, slots=True)
class _Viable:
    viability: Viability
    choices: _Choices


def _node_chosen(node: TrafficNode, rule: Rule, reason: str) -> NodeChosen:
    return NodeChosen(
        rule=rule,
        reason=reason,
        node_name=node.name,
        guid=node.guid,
        host=node.public.host,
        port=node.public.port,
    )


def _fallback(config: ClusterConfig, why: str) -> FallbackWanted:
    master = config.primary.public
    return FallbackWanted(
        rule=Rule.FALLBACK,
        reason=f"fallback: {why}",
        host=master.host,
        port=master.port,
        limit=config.selection.master_fallback_limit,
        retry_after_seconds=max(1, math.ceil(config.health.interval_seconds)),
    )


def _shared_public_port(nodes: tuple[TrafficNode, ...]) -> int:
    ports = {node.public.port for node in nodes}
    return ports.pop() if len(ports) == 1 else 443


_NOT_CACHED: tuple[NodeChosen, ...] = ()


def _prefix_decisions(
    index: PrefixIndex, key: str, choices: _Choices, by_name: Mapping[str, TrafficNode]
) -> tuple[NodeChosen, ...] | None:
    match = index.match_key(key, choices.viable_set)
    if match is None:
        return None
    reason = match.describe()
    return tuple(_node_chosen(by_name[name], Rule.PREFIX, reason) for name in match.nodes)


def _decide(
    config: ClusterConfig,
    index: PrefixIndex,
    by_name: Mapping[str, TrafficNode],
    viable: _Viable,
    health: Mapping[str, NodeHealth],
    client: ClientFacts,
    now: datetime,
    rng: random.Random,
) -> Selection:
    choices = viable.choices
    nodes = choices.nodes
    if not nodes:
        if not config.traffic_nodes:
            return _fallback(config, "no traffic nodes configured")
        return _fallback(config, f"no viable node ({viable.viability.describe_not_viable()})")

    key = index.longest_key(client.lookup_ip, client.ip_version)
    if key is not None:
        decisions = choices.prefix_decisions.get(key, _NOT_CACHED)
        if decisions is _NOT_CACHED:
            decisions = _prefix_decisions(index, key, choices, by_name)
            choices.prefix_decisions[key] = decisions
        if decisions is not None:
            return decisions[0] if len(decisions) == 1 else rng.choice(decisions)

    settings = config.selection
    method = settings.method
    if method is SelectionMethod.RANDOM:
        decisions = choices.random_decisions
        if not decisions:
            why = random_reason(len(nodes))
            decisions = tuple(_node_chosen(n, Rule.RANDOM, why) for n in nodes)
            choices.random_decisions = decisions
        return rng.choice(decisions)
    if method is SelectionMethod.TIMEZONE:
        groups = choices.timezone_groups
        if groups is None:
            groups = choices.timezone_groups = group_by_timezone(nodes)
        node, why = choose_by_timezone(nodes, client.utc_offset_minutes, now, rng, groups)
        rule = Rule.TIMEZONE if client.utc_offset_minutes is not None else Rule.RANDOM
        return _node_chosen(node, rule, why)
    if method is SelectionMethod.LEAST_LOADED:
        node, why = choose_least_loaded(nodes, health, rng)
        return _node_chosen(node, Rule.LEAST_LOADED, why)
    if method is SelectionMethod.A_RECORD and settings.a_record_hostname:
        host = settings.a_record_hostname
        return ARecordDirective(
            rule=Rule.A_RECORD,
            reason=f"a_record: resolve {host} ({len(nodes)} viable)",
            hostname=host,
            port=_shared_public_port(nodes),
        )
    if method is SelectionMethod.SRV and settings.srv_name:
        name = settings.srv_name
        return SrvDirective(
            rule=Rule.SRV,
            reason=f"srv: resolve {name} ({len(nodes)} viable)",
            srv_name=name,
        )
    if method is SelectionMethod.ANYCAST and settings.anycast_address:
        address, port = settings.anycast_address, settings.anycast_port
        tls_name = settings.anycast_tls_name or config.site_hostname
        return AnycastDirective(
            rule=Rule.ANYCAST,
            reason=f"anycast: connect to {address} port {port} (TLS name {tls_name}; "
            f"{len(nodes)} viable)",
            address=address,
            port=port,
            tls_name=tls_name,
        )
    # A DNS or anycast method without its name/address: the validation should refuse
    # that; if it gets through, serve the client from a viable node rather than fail.
    node, why = choose_random(nodes, rng)
    return _node_chosen(node, Rule.RANDOM, f"{method.value} is not configured; {why}")


def select_traffic_node(
    config: ClusterConfig,
    health: Mapping[str, NodeHealth],
    master_version: str,
    client: ClientFacts,
    *,
    now: datetime,
    rng: random.Random,
    index: PrefixIndex | None = None,
) -> Selection:
    """Choose the home traffic node for ``client`` (design section 3), purely.

    ``now`` is timezone-aware; it decides which nodes' health checks are stale and the
    current UTC offset of nodes in IANA zones. ``index`` defaults to one built from
    ``config`` (use :class:`Selector` to keep it between calls).
    """
    if index is None or index.revision != config.revision:
        index = PrefixIndex.build(config)
    by_name = {node.name: node for node in config.traffic_nodes}
    viability = assess_viability(config, health, master_version, now)
    viable = _Viable(viability, _Choices(viability.viable, by_name))
    return _decide(config, index, by_name, viable, health, client, now, rng)


def prefix_candidates(
    config: ClusterConfig,
    health: Mapping[str, NodeHealth],
    master_version: str,
    client: ClientFacts,
    *,
    now: datetime,
    index: PrefixIndex | None = None,
) -> PrefixMatch | None:
    """The prefix rule's winning prefix and tied viable nodes, before the random draw."""
    if index is None or index.revision != config.revision:
        index = PrefixIndex.build(config)
    viability = assess_viability(config, health, master_version, now)
    return index.match(client.lookup_ip, client.ip_version, viability.viable_set)


@dataclass(frozen=True, slots=True)
class _Revision:
    config: ClusterConfig
    index: PrefixIndex
    by_name: Mapping[str, TrafficNode]


def _still_valid(viability: Viability, now_ts: float) -> bool:
    return viability.valid_until is None or now_ts <= viability.valid_until


@dataclass(frozen=True, slots=True)
class _ViableCache:
    revision: _Revision
    health: HealthSnapshot
    master_version: str
    computed_at: float
    viable: _Viable


class Selector:
    """:func:`select_traffic_node` with its derived data kept between calls.

    The prefix index is rebuilt only when the configuration revision changes (the
    store gives every change a new revision). The viability is kept for the last
    :class:`~atlas.selection.health.HealthSnapshot` (an immutable object: the health
    monitor makes a new one per round) and master version until a viable node's health
    check goes stale. Updates swap whole objects, so readers in other threads see
    either the old or the new state, never a mix.
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.index_builds = 0
        self._revision = self._build(config)
        self._viable_cache: _ViableCache | None = None

    def _build(self, config: ClusterConfig) -> _Revision:
        self.index_builds += 1
        by_name = {node.name: node for node in config.traffic_nodes}
        return _Revision(config, PrefixIndex.build(config), by_name)

    @property
    def config(self) -> ClusterConfig:
        return self._revision.config

    @property
    def index(self) -> PrefixIndex:
        return self._revision.index

    def update_config(self, config: ClusterConfig) -> bool:
        """Take a new configuration; rebuild the index only for a new revision.

        Returns whether it rebuilt. Building takes about 7 µs per configured prefix
        (0.6 s for 1,000 nodes x 100 prefixes, docs/performance.md): for a large
        cluster call this from a worker thread
        (``asyncio.to_thread``); readers keep using the old revision until the new
        one is swapped in whole.
        """
        if config.revision == self._revision.config.revision:
            return False  # the store gives every change a new revision
        self._revision = self._build(config)
        return True

    def viability(
        self, health: Mapping[str, NodeHealth], master_version: str, now: datetime
    ) -> Viability:
        return self._viable(self._revision, health, master_version, now).viability

    def _viable(
        self,
        revision: _Revision,
        health: Mapping[str, NodeHealth],
        master_version: str,
        now: datetime,
    ) -> _Viable:
        now_ts = now.timestamp()
        cached = self._viable_cache
        if (
            cached is not None
            and cached.health is health
            and cached.revision is revision
            and cached.master_version == master_version
            and cached.computed_at <= now_ts
            and _still_valid(cached.viable.viability, now_ts)
        ):
            return cached.viable
        viability = assess_viability(revision.config, health, master_version, now)
        if (
            cached is not None
            and cached.revision is revision
            and cached.viable.choices.viable == viability.viable
        ):
            choices = cached.viable.choices  # same viable nodes: keep what was built
        else:
            choices = _Choices(viability.viable, revision.by_name)
        viable = _Viable(viability, choices)
        if isinstance(health, HealthSnapshot):
            self._viable_cache = _ViableCache(revision, health, master_version, now_ts, viable)
        return viable

    def select(
        self,
        health: Mapping[str, NodeHealth],
        master_version: str,
        client: ClientFacts,
        *,
        now: datetime,
        rng: random.Random,
    ) -> Selection:
        """As :func:`select_traffic_node`, with the cached index and viability."""
        revision = self._revision
        viable = self._viable(revision, health, master_version, now)
        return _decide(
            revision.config, revision.index, revision.by_name, viable, health, client, now,
            rng,
        )

    def candidates(
        self,
        health: Mapping[str, NodeHealth],
        master_version: str,
        client: ClientFacts,
        *,
        now: datetime,
    ) -> PrefixMatch | None:
        """The prefix rule's candidates before the random draw (``None``: no match)."""
        revision = self._revision
        viable = self._viable(revision, health, master_version, now)
        viable_set = viable.choices.viable_set
        return revision.index.match(client.lookup_ip, client.ip_version, viable_set)

    def route(
        self,
        health: Mapping[str, NodeHealth],
        master_version: str,
        client: ClientFacts,
        *,
        now: datetime,
        rng: random.Random,
        fallback: MasterFallback,
        client_id: str,
    ) -> Routing:
        """Select, then apply the master fallback limit: what the client is told."""
        selection = self.select(health, master_version, client, now=now, rng=rng)
        return admit(selection, fallback, client_id)
