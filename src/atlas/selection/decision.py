"""What the traffic-node choice decided, and why (design section 3, conventions).

Every decision carries ``rule`` — a machine tag naming the rule that decided — and
``reason``, one line of text for the API, the cluster page and the cluster test.

:func:`~atlas.selection.selector.select_traffic_node` returns a :data:`Selection`: a
node, a DNS or anycast directive, or :class:`FallbackWanted` when no traffic node is
viable. :func:`~atlas.selection.fallback.admit` turns ``FallbackWanted`` into
:class:`FallbackToMaster` or :class:`NoneAvailable`, giving a :data:`Routing` — what
the client is told.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import ClassVar


class Rule(StrEnum):
    """Which rule decided."""

    PREFIX = "prefix"
    RANDOM = "random"
    TIMEZONE = "timezone"
    LEAST_LOADED = "least_loaded"
    A_RECORD = "a_record"
    SRV = "srv"
    ANYCAST = "anycast"
    FALLBACK = "fallback"
    NONE = "none"


class Outcome(StrEnum):
    """What the client is told to do."""

    NODE = "node"  # connect to this traffic node
    A_RECORD = "a_record"  # resolve this hostname, connect to what DNS returns
    SRV = "srv"  # resolve this SRV name, try its targets in RFC 2782 order
    ANYCAST = "anycast"  # connect to this shared IP address
    FALLBACK_WANTED = "fallback_wanted"  # no viable node; not yet admitted to the master
    MASTER_FALLBACK = "master_fallback"  # use the master as the home traffic node
    NONE = "none"  # nothing available; retry later


JsonValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Base of every decision: the rule that decided and the reason in words."""

    outcome: ClassVar[Outcome]
    rule: Rule
    reason: str

    def to_dict(self) -> dict[str, JsonValue]:
        """A JSON-serialisable dict: ``outcome``, ``rule``, ``reason`` and the details."""
        out: dict[str, JsonValue] = {"outcome": self.outcome.value}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, StrEnum) else value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeChosen(Decision):
    """Connect to this traffic node (its public address)."""

    outcome: ClassVar[Outcome] = Outcome.NODE
    node_name: str
    guid: str | None
    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ARecordDirective(Decision):
    """Resolve ``hostname`` (A/AAAA) and connect to whatever address DNS returns."""

    outcome: ClassVar[Outcome] = Outcome.A_RECORD
    hostname: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SrvDirective(Decision):
    """Resolve the SRV name and try its targets in RFC 2782 order."""

    outcome: ClassVar[Outcome] = Outcome.SRV
    srv_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AnycastDirective(Decision):
    """Connect to the shared anycast address; verify TLS against ``tls_name``."""

    outcome: ClassVar[Outcome] = Outcome.ANYCAST
    address: str
    port: int
    tls_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackWanted(Decision):
    """No traffic node is viable: the client should use the master, if admitted.

    ``limit`` is the configured master fallback client limit, carried so admission
    needs nothing else from the configuration.
    """

    outcome: ClassVar[Outcome] = Outcome.FALLBACK_WANTED
    host: str
    port: int
    limit: int
    retry_after_seconds: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackToMaster(Decision):
    """Use the master as the home traffic node (counted against the limit)."""

    outcome: ClassVar[Outcome] = Outcome.MASTER_FALLBACK
    host: str
    port: int
    client_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NoneAvailable(Decision):
    """No traffic node and no room on the master: retry after the hint."""

    outcome: ClassVar[Outcome] = Outcome.NONE
    retry_after_seconds: int


Directive = ARecordDirective | SrvDirective | AnycastDirective
Selection = NodeChosen | ARecordDirective | SrvDirective | AnycastDirective | FallbackWanted
Routing = (
    NodeChosen | ARecordDirective | SrvDirective | AnycastDirective | FallbackToMaster
    | NoneAvailable
)
