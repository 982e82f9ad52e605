"""Following the master's DNS directives on the client (design section 3).

With the ``a_record`` method the master tells the client a shared hostname: the client
resolves it and connects to whatever addresses DNS returns. With ``srv`` it tells the
client an SRV name: the client resolves it, orders the records as RFC 2782 says
(priority, then weighted random within a priority) and tries the targets in that order,
moving to the next on failure. When nothing can be resolved or reached the client falls
back to the master (design section 3, rule 4) — that decision belongs to the caller;
this module reports what failed and why.

The ordering is pure (:func:`order_srv_records`, randomness from the ``rng`` passed in);
the lookups are a thin adapter over the project resolver (:mod:`atlas.net.resolver`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import dns.exception
import dns.rdatatype
import dns.resolver

from atlas.net.resolver import DnsServer, ResolutionError, Resolver
from atlas.selection.decision import AnycastDirective, Directive, SrvDirective

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One SRV resource record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str  # hostname without the final dot; "." = service not available


def order_srv_records(records: Iterable[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """The order in which to contact SRV targets, as RFC 2782 ("Usage rules") says.

    Lowest priority first. Within one priority, repeatedly: place the weight-0 records
    first and the rest in any (here: shuffled) order, compute running sums of the
    weights, draw a uniform integer in ``[0, sum]`` and take the first record whose
    running sum is ``>=`` the draw. So a weight-0 record is picked only when the draw is
    0 (a small chance while weighted records remain), and when every weight is 0 the
    shuffle alone decides, uniformly. Records with the target ``.`` are dropped.
    """
    by_priority: dict[int, list[SrvRecord]] = {}
    for record in records:
        if record.target in (".", ""):
            continue
        by_priority.setdefault(record.priority, []).append(record)
    ordered: list[SrvRecord] = []
    for priority in sorted(by_priority):
        unordered = by_priority[priority]
        while unordered:
            rng.shuffle(unordered)
            unordered.sort(key=lambda r: r.weight != 0)  # stable: weight 0 first
            total = sum(r.weight for r in unordered)
            draw = rng.randint(0, total)
            running = 0
            for i, record in enumerate(unordered):
                running += record.weight
                if running >= draw:
                    ordered.append(unordered.pop(i))
                    break
    return ordered


@dataclass(frozen=True, slots=True)
class ConnectTarget:
    """One address to try: ``hostname`` for TLS (SNI, certificate), ``address`` to dial."""

    hostname: str
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.hostname} ({host}:{self.port})"


@dataclass(frozen=True, slots=True)
class ResolvedTargets:
    """Targets in the order to try them, and the SRV targets that did not resolve."""

    targets: tuple[ConnectTarget, ...]
    unresolved: tuple[tuple[str, str], ...] = ()  # (hostname, why)


def make_resolver(
    nameserver: tuple[str, int] | None = None,
    resolver: Resolver | None = None,
    *,
    timeout: float = 3.0,
) -> Resolver:
    """The resolver to use: the one given, else one asking ``nameserver`` only."""
    if resolver is not None:
        return resolver
    if nameserver is not None:
        return Resolver(DnsServer(*nameserver), timeout=timeout)
    return Resolver(timeout=timeout)


async def resolve_srv(name: str, resolver: Resolver, rng: random.Random) -> list[SrvRecord]:
    """Look up the SRV records of ``name`` and return them in RFC 2782 order."""
    try:
        answer = await resolver.dns_resolver.resolve(
            name,
            dns.rdatatype.SRV,
            search=False,
            source=resolver.source_address,
            lifetime=resolver.timeout,
        )
    except dns.exception.DNSException as exc:
        why = str(exc) or type(exc).__name__
        raise ResolutionError(f"cannot resolve SRV {name!r}: {why}") from exc
    records = [
        SrvRecord(
            priority=int(rr.priority),
            weight=int(rr.weight),
            port=int(rr.port),
            target=rr.target.to_text(omit_final_dot=True) or ".",
        )
        for rr in answer
    ]
    ordered = order_srv_records(records, rng)
    if not ordered:
        raise ResolutionError(f"SRV {name!r}: the service is not available (target '.')")
    return ordered


async def srv_targets(name: str, resolver: Resolver, rng: random.Random) -> ResolvedTargets:
    """Resolve an SRV directive to addresses, in the order to try them.

    Every SRV target is resolved (A and AAAA, concurrently); its addresses keep the
    target's place in the order. A target that does not resolve is listed in
    ``unresolved``; if none resolves the whole lookup fails.
    """
    records = await resolve_srv(name, resolver, rng)
    hosts = list(dict.fromkeys(r.target for r in records))
    results = await asyncio.gather(
        *(resolver.resolve(host) for host in hosts), return_exceptions=True
    )
    addresses: dict[str, list[str]] = {}
    unresolved: list[tuple[str, str]] = []
    for host, result in zip(hosts, results, strict=True):
        if isinstance(result, ResolutionError):
            unresolved.append((host, str(result)))
        elif isinstance(result, BaseException):
            raise result
        else:
            addresses[host] = result
    targets = tuple(
        ConnectTarget(r.target, address, r.port)
        for r in records
        for address in addresses.get(r.target, ())
    )
    if not targets:
        why = "; ".join(f"{host}: {err}" for host, err in unresolved)
        raise ResolutionError(f"SRV {name!r}: no target resolves ({why})")
    return ResolvedTargets(targets, tuple(unresolved))


async def a_record_targets(hostname: str, port: int, resolver: Resolver) -> ResolvedTargets:
    """Resolve an A-record directive: every address DNS returns, in its order."""
    addresses = await resolver.resolve(hostname, port)
    return ResolvedTargets(tuple(ConnectTarget(hostname, a, port) for a in addresses))


async def directive_targets(
    directive: Directive,
    rng: random.Random,
    *,
    nameserver: tuple[str, int] | None = None,
    resolver: Resolver | None = None,
) -> ResolvedTargets:
    """The addresses to try for a directive from the master, in order.

    Anycast needs no lookup: the master gave the address (the only method that does)
    and the name to verify TLS against. Raises :class:`ResolutionError` when DNS gives
    nothing usable — the caller then falls back to the master (design section 3).
    """
    if isinstance(directive, AnycastDirective):
        target = ConnectTarget(directive.tls_name, directive.address, directive.port)
        return ResolvedTargets((target,))
    dns_resolver = make_resolver(nameserver, resolver)
    if isinstance(directive, SrvDirective):
        return await srv_targets(directive.srv_name, dns_resolver, rng)
    return await a_record_targets(directive.hostname, directive.port, dns_resolver)


@dataclass(frozen=True, slots=True)
class ConnectFailure(Generic[T]):
    target: T
    error: Exception

    def __str__(self) -> str:
        return f"{self.target}: {self.error or type(self.error).__name__}"


@dataclass(frozen=True, slots=True)
class ConnectResult(Generic[T, R]):
    """Which target succeeded (``None``: none did) and why each earlier one failed."""

    target: T | None
    value: R | None
    failures: tuple[ConnectFailure[T], ...]

    @property
    def ok(self) -> bool:
        return self.target is not None

    def describe_failures(self) -> str:
        return "; ".join(str(f) for f in self.failures)


async def connect_in_order(
    targets: Sequence[T] | Iterable[T],
    try_connect: Callable[[T], Awaitable[R]],
    *,
    attempt_timeout: float | None = None,
) -> ConnectResult[T, R]:
    """Try each target in turn until one connects (RFC 2782: "try the next on failure").

    ``try_connect`` returns the connection or raises. Each attempt is bounded by
    ``attempt_timeout`` (a timeout counts as that target's failure). Cancellation is
    not a failure: it propagates at once.
    """
    failures: list[ConnectFailure[T]] = []
    for target in targets:
        try:
            async with asyncio.timeout(attempt_timeout):
                value = await try_connect(target)
        except Exception as exc:
            failures.append(ConnectFailure(target, exc))
            continue
        return ConnectResult(target, value, tuple(failures))
    return ConnectResult(None, None, tuple(failures))
