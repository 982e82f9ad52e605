"""Client side of the DNS methods: RFC 2782 ordering, resolution, connecting in order.

(Tests ``atlas.clients.dns_directives``; they live here with the rest of the traffic-node
choice.)
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest

from atlas.clients.dns_directives import (
    ConnectTarget,
    SrvRecord,
    a_record_targets,
    connect_in_order,
    directive_targets,
    make_resolver,
    order_srv_records,
    resolve_srv,
    srv_targets,
)
from atlas.net.resolver import ResolutionError
from atlas.selection import AnycastDirective, ARecordDirective, Rule, SrvDirective
from tests.selection.selection_helpers import CHI2_999, chi_square
from tests.support.dnsmasq import dnsmasq

SRV = "_atlas._tcp.support.example.test"


def rec(priority: int, weight: int, target: str, port: int = 443) -> SrvRecord:
    return SrvRecord(priority=priority, weight=weight, port=port, target=target)


# --- RFC 2782 ordering (pure) --------------------------------------------------------


def test_lower_priority_always_comes_first() -> None:
    records = [
        rec(20, 100, "c"), rec(10, 1, "a"), rec(30, 0, "d"), rec(10, 50, "b"), rec(5, 0, "z")
    ]
    rng = random.Random(1)
    for _ in range(500):
        ordered = order_srv_records(records, rng)
        assert sorted(ordered, key=lambda r: r.target) == sorted(records, key=lambda r: r.target)
        assert [r.priority for r in ordered] == [5, 10, 10, 20, 30]


def first_choices(records, draws: int, seed: int) -> Counter[str]:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    return Counter(order_srv_records(records, rng)[0].target for _ in range(draws))


def test_weights_share_the_first_place_as_rfc_2782_computes() -> None:
    """Draw uniform in [0, 100] over running sums: with no weight-0 record, the record
    shuffled to the front also takes the draw 0, so P(first) = (w + 1/3) / 101."""
    records = [rec(10, 10, "ten"), rec(10, 60, "sixty"), rec(10, 30, "thirty")]
    draws = 60_000
    seen = first_choices(records, draws, seed=2782)
    expected = {r.target: draws * (r.weight + 1 / 3) / 101 for r in records}
    assert chi_square(seen, expected) < CHI2_999[2]


def test_weight_zero_records_have_a_small_chance_while_weighted_ones_remain() -> None:
    """Weight-0 records go first in the list, so only the draw 0 picks one: 1/101."""
    records = [rec(1, 0, "zero"), rec(1, 50, "a"), rec(1, 50, "b")]
    draws = 101_000
    seen = first_choices(records, draws, seed=7)
    expected = {"zero": draws / 101, "a": draws * 50 / 101, "b": draws * 50 / 101}
    assert 0 < seen["zero"] < draws * 0.02
    assert chi_square(seen, expected) < CHI2_999[2]


def test_all_zero_weights_are_uniform() -> None:
    records = [rec(1, 0, t) for t in "abcd"]
    draws = 20_000
    seen = first_choices(records, draws, seed=3)
    assert chi_square(seen, dict.fromkeys("abcd", draws / 4)) < CHI2_999[3]


def test_second_place_follows_the_remaining_weights() -> None:
    records = [rec(1, 90, "heavy"), rec(1, 10, "light")]
    rng = random.Random(5)
    orders = Counter(
        tuple(r.target for r in order_srv_records(records, rng)) for _ in range(10_000)
    )
    assert set(orders) == {("heavy", "light"), ("light", "heavy")}
    assert orders[("heavy", "light")] > 8_500


def test_dot_target_means_not_available() -> None:
    assert order_srv_records([rec(0, 0, ".")], random.Random(1)) == []


# --- connect_in_order ----------------------------------------------------------------


async def test_connect_in_order_moves_to_the_next_target_on_failure() -> None:
    tried: list[str] = []

    async def try_connect(target: str) -> str:
        tried.append(target)
        if target != "third":
            raise ConnectionRefusedError(f"{target} refused")
        return f"connected to {target}"

    result = await connect_in_order(["first", "second", "third", "fourth"], try_connect)
    assert result.ok
    assert (result.target, result.value) == ("third", "connected to third")
    assert tried == ["first", "second", "third"]
    assert [f.target for f in result.failures] == ["first", "second"]
    assert all(isinstance(f.error, ConnectionRefusedError) for f in result.failures)
    assert result.describe_failures() == "first: first refused; second: second refused"


async def test_connect_in_order_reports_every_failure_when_none_connects() -> None:
    never = asyncio.Event()

    async def try_connect(target: str) -> None:
        if target == "hangs":
            await never.wait()
        raise OSError(f"{target} unreachable")

    result = await connect_in_order(["a", "hangs", "b"], try_connect, attempt_timeout=0.05)
    assert not result.ok
    assert result.target is None
    assert [f.target for f in result.failures] == ["a", "hangs", "b"]
    assert isinstance(result.failures[1].error, TimeoutError)


async def test_connect_in_order_does_not_swallow_cancellation() -> None:
    started = asyncio.Event()

    async def try_connect(target: str) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(connect_in_order(["a", "b"], try_connect))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- against a real DNS server (dnsmasq) ----------------------------------------------


def _free_tcp_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"us1": _free_tcp_port("127.1.0.11"), "us2": _free_tcp_port("127.1.0.12")}


@pytest.fixture(scope="module")
def dns_server(ports: dict[str, int]) -> Iterator[tuple[str, int]]:
    z = "support.example.test"
    args = [
        "--local=/example.test/",
        # --srv-host=name,target,port,priority,weight
        f"--srv-host={SRV},us1.{z},{ports['us1']},10,60",
        f"--srv-host={SRV},us2.{z},{ports['us2']},20,40",
        f"--srv-host={SRV},ghost.{z},443,30,10",
        f"--srv-host=_gone._tcp.{z},.",
        f"--host-record=us1.{z},127.1.0.11",
        f"--host-record=us2.{z},127.1.0.12,::1",
        f"--host-record=traffic.{z},127.1.0.11",
    ]
    with dnsmasq(args) as server:
        yield server


async def test_srv_records_resolved_through_a_real_dns_server(
    dns_server: tuple[str, int], ports: dict[str, int]
) -> None:
    resolver = make_resolver(nameserver=dns_server)
    records = await resolve_srv(SRV, resolver, random.Random(1))
    assert [(r.priority, r.weight, r.target) for r in records] == [
        (10, 60, "us1.support.example.test"),
        (20, 40, "us2.support.example.test"),
        (30, 10, "ghost.support.example.test"),
    ]
    resolved = await srv_targets(SRV, resolver, random.Random(1))
    assert resolved.targets == (
        ConnectTarget("us1.support.example.test", "127.1.0.11", ports["us1"]),
        ConnectTarget("us2.support.example.test", "127.1.0.12", ports["us2"]),
        ConnectTarget("us2.support.example.test", "::1", ports["us2"]),
    )
    assert [host for host, _ in resolved.unresolved] == ["ghost.support.example.test"]


async def test_a_record_resolved_through_a_real_dns_server(dns_server: tuple[str, int]) -> None:
    resolved = await a_record_targets(
        "traffic.support.example.test", 8443, make_resolver(nameserver=dns_server)
    )
    assert resolved.targets == (ConnectTarget("traffic.support.example.test", "127.1.0.11", 8443),)


async def test_directive_targets_for_each_directive(
    dns_server: tuple[str, int], ports: dict[str, int]
) -> None:
    rng = random.Random(1)
    srv = SrvDirective(rule=Rule.SRV, reason="", srv_name=SRV)
    got = await directive_targets(srv, rng, nameserver=dns_server)
    assert got.targets[0] == ConnectTarget("us1.support.example.test", "127.1.0.11", ports["us1"])
    a = ARecordDirective(
        rule=Rule.A_RECORD, reason="", hostname="traffic.support.example.test", port=443
    )
    got = await directive_targets(a, rng, nameserver=dns_server)
    assert got.targets == (ConnectTarget("traffic.support.example.test", "127.1.0.11", 443),)
    anycast = AnycastDirective(
        rule=Rule.ANYCAST, reason="", address="192.0.2.80", port=8443,
        tls_name="anycast.support.example.test",
    )
    got = await directive_targets(anycast, rng)  # no DNS involved
    assert got.targets == (ConnectTarget("anycast.support.example.test", "192.0.2.80", 8443),)


async def test_missing_srv_name_and_dot_target_are_resolution_errors(
    dns_server: tuple[str, int],
) -> None:
    resolver = make_resolver(nameserver=dns_server)
    with pytest.raises(ResolutionError, match="cannot resolve SRV"):
        await resolve_srv("_none._tcp.support.example.test", resolver, random.Random(1))
    with pytest.raises(ResolutionError, match="not available"):
        await resolve_srv("_gone._tcp.support.example.test", resolver, random.Random(1))


@pytest.fixture
async def us2_listener(ports: dict[str, int]) -> AsyncIterator[asyncio.Server]:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"us2\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.1.0.12", ports["us2"])
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


async def test_srv_failover_to_the_next_target_over_real_sockets(
    dns_server: tuple[str, int], us2_listener: asyncio.Server
) -> None:
    """us1 (priority 10) refuses the connection; the client moves on to us2 (20)."""
    resolved = await srv_targets(SRV, make_resolver(nameserver=dns_server), random.Random(1))

    async def try_connect(target: ConnectTarget) -> bytes:
        reader, writer = await asyncio.open_connection(target.address, target.port)
        try:
            return await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()

    result = await connect_in_order(resolved.targets, try_connect, attempt_timeout=2)
    assert result.target is not None
    assert result.target.hostname == "us2.support.example.test"
    assert result.value == b"us2\n"
    assert [f.target.hostname for f in result.failures] == ["us1.support.example.test"]
    assert isinstance(result.failures[0].error, ConnectionRefusedError)
