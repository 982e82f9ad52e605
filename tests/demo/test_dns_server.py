"""The demo's DNS server: its answers as clients we did not write see them (dig, dnspython).

The pure core (:func:`answer`) gets golden bytes and fuzzing; the asyncio adapter gets
real sockets on loopback; the subprocess runner gets started, reloaded and stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.demo.dns_server import (
    EDNS_PAYLOAD,
    DnsServer,
    Transport,
    answer,
    parse_listen,
    respond,
)
from atlas.demo.zone import DemoZone
from atlas.net.resolver import DnsServer as DnsAddress
from atlas.net.resolver import Resolver
from tests.demo.dns_helpers import (
    ASIA_SOURCE,
    ASIA_SRV,
    ASIA_TRAFFIC,
    MANY,
    OTHER_SOURCE,
    US_SOURCE,
    US_SRV,
    US_TRAFFIC,
    ThreadedDnsServer,
    demo_zone,
    dig_header,
    dig_short,
    parse_srv,
)
from tests.support.dnsmasq import free_udp_tcp_port

ZONE = demo_zone()


def query(name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)


def parse(wire: bytes | None) -> dns.message.Message:
    assert wire is not None
    return dns.message.from_wire(wire)


# ---- the pure core ---------------------------------------------------------------------


GOLDEN_QUERY = bytes.fromhex(
    "1234 0100 0001 0000 0000 0000"  # id, RD, one question
    "076d617374657231 07737570706f7274 076578616d706c65 0474657374 00"  # master1.support…
    "0001 0001"  # A IN
)
GOLDEN_RESPONSE = bytes.fromhex(
    "1234 8500 0001 0001 0000 0000"  # QR AA RD, NOERROR, one answer
    "076d617374657231 07737570706f7274 076578616d706c65 0474657374 00 0001 0001"
    "c00c 0001 0001 00000005 0004 7f000101"  # → question name, A IN, TTL 5, 127.0.1.1
)


def test_golden_bytes() -> None:
    assert answer(ZONE, GOLDEN_QUERY, OTHER_SOURCE) == GOLDEN_RESPONSE


def test_responses_and_runts_are_dropped() -> None:
    as_response = bytearray(GOLDEN_QUERY)
    as_response[2] |= 0x80  # QR
    assert answer(ZONE, bytes(as_response), OTHER_SOURCE) is None
    assert answer(ZONE, GOLDEN_QUERY[:11], OTHER_SOURCE) is None


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (GOLDEN_QUERY + b"\x00", "trailing junk"),
        (GOLDEN_QUERY[:-3], "question cut short"),
        (GOLDEN_QUERY[:5] + b"\x02" + GOLDEN_QUERY[6:] + GOLDEN_QUERY[12:], "two questions"),
        (GOLDEN_QUERY[:5] + b"\x00" + GOLDEN_QUERY[6:12], "no question"),
        (GOLDEN_QUERY[:12] + b"\xc0\x0c" + GOLDEN_QUERY[-4:], "name pointer loop"),
    ],
)
def test_malformed_queries_get_formerr(wire: bytes, why: str) -> None:
    reply = respond(ZONE, wire, OTHER_SOURCE)
    assert reply is not None, why
    assert reply.wire[:2] == b"\x12\x34"
    response = parse(reply.wire)
    assert response.rcode() == dns.rcode.FORMERR
    assert response.flags & dns.flags.QR and response.flags & dns.flags.RD


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS])
def test_other_opcodes_get_notimp(opcode: dns.opcode.Opcode) -> None:
    q = query("support.example.test")
    q.set_opcode(opcode)
    response = parse(answer(ZONE, q.to_wire(), OTHER_SOURCE))
    assert response.rcode() == dns.rcode.NOTIMP and response.opcode() == opcode


def test_edns_version_1_gets_badvers() -> None:
    response = parse(answer(ZONE, query("support.example.test", use_edns=1).to_wire(), "::1"))
    assert response.rcode() == dns.rcode.BADVERS and response.edns == 0


@pytest.mark.parametrize(
    ("q", "rcode"),
    [(query("support.example.test", "AXFR"), dns.rcode.REFUSED),
     (query("version.bind", "TXT", rdclass="CH"), dns.rcode.REFUSED),
     (query("support.example.test", "IXFR"), dns.rcode.REFUSED)],
)
def test_refused_questions(q: dns.message.Message, rcode: dns.rcode.Rcode) -> None:
    response = parse(answer(ZONE, q.to_wire(), OTHER_SOURCE))
    assert response.rcode() == rcode and not response.flags & dns.flags.AA


def test_truncation_depends_on_transport_and_edns() -> None:
    def ask(transport: Transport, **kw: Any) -> dns.message.Message:
        wire = query("many.support.example.test", **kw).to_wire()
        return parse(answer(ZONE, wire, OTHER_SOURCE, transport))

    plain = ask("udp")
    assert plain.flags & dns.flags.TC and not plain.answer  # whole record sets only
    assert len(ask("udp").to_wire()) <= 512
    small_edns = ask("udp", use_edns=0, payload=600)
    assert small_edns.flags & dns.flags.TC
    big_edns = ask("udp", use_edns=0, payload=4096)  # capped at our 1232: still fits
    assert not big_edns.flags & dns.flags.TC and len(big_edns.answer[0]) == len(MANY)
    assert big_edns.payload == EDNS_PAYLOAD
    tcp = ask("tcp")
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == len(MANY)


def test_additional_data_is_dropped_before_answers_are_truncated() -> None:
    """RFC 2181 §9: TC only when the answer itself does not fit."""
    data = ZONE.to_dict()
    data["records"]["_big._tcp"] = {"SRV": [
        {"priority": 1, "weight": 1, "port": 1, "target": "many"}]}
    zone = DemoZone.from_dict(data)
    response = parse(answer(zone, query("_big._tcp.support.example.test", "SRV").to_wire(),
                            OTHER_SOURCE))
    assert not response.flags & dns.flags.TC
    assert len(response.answer) == 1 and not response.additional


@settings(max_examples=2000)
@given(st.binary(max_size=600))
def test_any_bytes_get_a_response_or_nothing(data: bytes) -> None:
    wire = answer(ZONE, data, OTHER_SOURCE)
    if wire is not None:
        assert wire[:2] == data[:2] and wire[2] & 0x80


@settings(max_examples=1000)
@given(
    st.sampled_from([GOLDEN_QUERY, query("_atlas._tcp.support.example.test", "SRV",
                                         use_edns=0).to_wire()]),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 6),
)
def test_damaged_queries_get_a_response_or_nothing(
    base: bytes, changes: list[tuple[int, int]], cut: int
) -> None:
    """Near-valid queries reach deeper into the parser than random bytes do."""
    data = bytearray(base)
    for position, value in changes:
        if position < len(data):
            data[position] = value
    damaged = bytes(data[: len(data) - cut])
    reply = respond(ZONE, damaged, US_SOURCE)
    if reply is not None:
        response = dns.message.from_wire(reply.wire)
        assert response.id == int.from_bytes(damaged[:2], "big")
        assert reply.rcode != dns.rcode.SERVFAIL, reply.explanation


_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)


@settings(max_examples=300)
@given(st.lists(_LABEL, max_size=4), st.sampled_from(["A", "AAAA", "SRV", "ANY", "TXT", "MX"]))
def test_every_name_in_the_zone_is_answered_authoritatively(
    labels: list[str], rdtype: str
) -> None:
    name = ".".join([*labels, "support.example.test"])
    response = parse(answer(ZONE, query(name, rdtype).to_wire(), US_SOURCE))
    assert response.flags & dns.flags.AA
    assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    assert response.answer or response.authority  # data, or the SOA for caching


# ---- real sockets: dig and dnspython against a running server ----------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedDnsServer]:
    with ThreadedDnsServer(ZONE) as running:
        yield running


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_node_addresses(server: ThreadedDnsServer, transport: str) -> None:
    port = server.port
    assert dig_short(port, "master1.support.example.test", "A", transport) == ["127.0.1.1"]
    assert dig_short(port, "support.example.test", "A", transport) == ["127.0.1.1"]
    assert dig_short(port, "us-traffic1.support.example.test", "AAAA", transport) == ["fd00::2:1"]


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
@pytest.mark.parametrize(
    ("source", "expected"),
    [(US_SOURCE, US_TRAFFIC), (ASIA_SOURCE, ASIA_TRAFFIC),
     (OTHER_SOURCE, US_TRAFFIC | ASIA_TRAFFIC), ("127.30.0.1", US_TRAFFIC | ASIA_TRAFFIC)],
)
def test_shared_name_depends_on_the_client_network(
    server: ThreadedDnsServer, transport: str, source: str, expected: set[str]
) -> None:
    lines = dig_short(server.port, "-b", source, "traffic.support.example.test", "A", transport)
    assert set(lines) == expected and len(lines) == len(expected)


def test_default_region_for_unknown_networks() -> None:
    with ThreadedDnsServer(demo_zone(default_region="asia")) as srv:
        lines = dig_short(srv.port, "-b", "127.30.0.1", "traffic.support.example.test")
        assert set(lines) == ASIA_TRAFFIC
        assert set(dig_short(srv.port, "-b", US_SOURCE, "traffic.support.example.test")) == (
            US_TRAFFIC
        )


@pytest.mark.parametrize(("source", "expected"), [(US_SOURCE, US_TRAFFIC),
                                                  (ASIA_SOURCE, ASIA_TRAFFIC)])
def test_dnspython_stub_resolver_from_a_client_network(
    server: ThreadedDnsServer, source: str, expected: set[str]
) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    result = resolver.resolve("traffic.support.example.test", "A", source=source, search=False)
    assert {r.to_text() for r in result} == expected
    assert result.rrset is not None and result.rrset.ttl == 5


def test_project_resolver_sees_the_geo_answer(server: ThreadedDnsServer) -> None:
    resolver = Resolver(DnsAddress("127.0.0.1", server.port), source_address=ASIA_SOURCE)
    found = asyncio.run(resolver.resolve("traffic.support.example.test"))
    assert set(found) == ASIA_TRAFFIC


def test_srv_priorities_and_weights(server: ThreadedDnsServer) -> None:
    lines = dig_short(server.port, "_atlas._tcp.support.example.test", "SRV")
    assert parse_srv(lines) == US_SRV and len(lines) == len(US_SRV)


@pytest.mark.parametrize(("source", "expected"), [(US_SOURCE, US_SRV), (ASIA_SOURCE, ASIA_SRV),
                                                  (OTHER_SOURCE, US_SRV | ASIA_SRV)])
def test_geo_srv(server: ThreadedDnsServer, source: str, expected: set[object]) -> None:
    lines = dig_short(server.port, "-b", source, "_geo._tcp.support.example.test", "SRV", "+tcp")
    assert parse_srv(lines) == expected


def test_srv_answer_carries_target_addresses(server: ThreadedDnsServer) -> None:
    status, flags, out = dig_header(server.port, "_atlas._tcp.support.example.test", "SRV")
    assert (status, "aa" in flags) == ("NOERROR", True)
    additional = out.split("ADDITIONAL SECTION:")[1]
    for line in ("us-traffic1.support.example.test. 5 IN A\t127.0.2.1",
                 "asia-traffic1.support.example.test. 5 IN A\t127.0.3.1"):
        assert " ".join(line.split()) in " ".join(additional.split())


@pytest.mark.parametrize(
    ("args", "status", "authoritative", "has_soa"),
    [
        (["nope.support.example.test", "A"], "NXDOMAIN", True, True),
        (["master1.support.example.test", "AAAA"], "NOERROR", True, True),
        (["_tcp.support.example.test", "SRV"], "NOERROR", True, True),
        (["MASTER1.Support.Example.Test", "A"], "NOERROR", True, False),
        (["example.com", "A"], "REFUSED", False, False),
        (["version.bind", "CH", "TXT"], "REFUSED", False, False),
        (["support.example.test", "A", "+edns=1", "+noednsneg"], "BADVERS", False, False),
    ],
)
def test_status_and_flags(
    server: ThreadedDnsServer, args: list[str], status: str, authoritative: bool, has_soa: bool
) -> None:
    got_status, flags, out = dig_header(server.port, *args)
    assert got_status == status
    assert ("aa" in flags) is authoritative
    assert "qr" in flags and "ra" not in flags
    assert ("IN\tSOA\tns.support.example.test." in out) is has_soa


def test_truncation_seen_by_dig(server: ThreadedDnsServer) -> None:
    port, name = server.port, "many.support.example.test"
    status, flags, out = dig_header(port, name, "+noedns", "+ignore")
    assert status == "NOERROR"
    assert "tc" in flags and "127.0.9.1" not in out
    _, flags, _ = dig_header(port, name, "+bufsize=600", "+ignore")
    assert "tc" in flags
    assert len(dig_short(port, name, "+noedns")) == len(MANY)  # dig retries over TCP
    assert len(dig_short(port, name)) == len(MANY)  # dig's EDNS 1232 is enough


def test_formerr_and_notimp_over_sockets(server: ThreadedDnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(GOLDEN_QUERY + b"junk", ("127.0.0.1", server.port))
        data = sock.recv(4096)
    assert data[:2] == b"\x12\x34" and data[3] & 0xF == dns.rcode.FORMERR
    notify = query("support.example.test", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    response = dns.query.udp(notify, "127.0.0.1", port=server.port, timeout=5)
    assert response.rcode() == dns.rcode.NOTIMP


def test_random_bytes_do_not_kill_the_server(server: ThreadedDnsServer) -> None:
    port = server.port
    target = ("127.0.0.1", port)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=700), st.booleans())
    def send(data: bytes, over_tcp: bool) -> None:
        if over_tcp:
            with socket.create_connection(target, timeout=5) as conn:
                framed = struct.pack("!H", len(data)) + data
                conn.sendall(framed if data[:1] == b"\x00" else data)  # framed, or raw bytes
        else:
            udp.sendto(data, target)

    try:
        send()
    finally:
        udp.close()
    assert dig_short(port, "master1.support.example.test") == ["127.0.1.1"]
    assert dig_short(port, "master1.support.example.test", "+tcp") == ["127.0.1.1"]


# ---- the asyncio adapter --------------------------------------------------------------------


async def test_in_process_server_and_clean_stop() -> None:
    async with DnsServer(ZONE, "127.0.0.1", 0) as srv:
        port = srv.port
        q = query("traffic.support.example.test")
        by_udp = await dns.asyncquery.udp(q, "127.0.0.1", port=port, source=US_SOURCE, timeout=5)
        by_tcp = await dns.asyncquery.tcp(q, "127.0.0.1", port=port, source=ASIA_SOURCE,
                                          timeout=5)
        assert {r.to_text() for r in by_udp.answer[0]} == US_TRAFFIC
        assert {r.to_text() for r in by_tcp.answer[0]} == ASIA_TRAFFIC
        assert srv.stats.udp_queries == 1 and srv.stats.tcp_queries == 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # left open
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()
    assert_port_free(port)


def assert_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        with pytest.raises(ConnectionRefusedError):
            tcp.connect(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", port))


async def test_fixed_port_and_serve_forever() -> None:
    port = free_udp_tcp_port()
    srv = DnsServer(ZONE, "127.0.0.1", port)
    task = asyncio.create_task(srv.serve_forever())
    deadline = time.monotonic() + 5
    while srv.stats.udp_queries == 0:
        try:
            await dns.asyncquery.udp(query("master1.support.example.test"), "127.0.0.1",
                                     port=port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            assert time.monotonic() < deadline
    await srv.close()
    await asyncio.wait_for(task, 5)
    assert_port_free(port)


async def test_address_taken_leaves_nothing_bound() -> None:
    port = free_udp_tcp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(OSError):
            await DnsServer(ZONE, "127.0.0.1", port).start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))  # the UDP half was released


async def test_tcp_pipelined_queries_on_one_connection() -> None:
    async with DnsServer(ZONE, "127.0.0.1", 0) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        names = ["master1.support.example.test", "master2.support.example.test",
                 "many.support.example.test"]
        writer.write(b"".join(query(n).to_wire(prepend_length=True) for n in names))
        for name in names:
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
            response = dns.message.from_wire(await reader.readexactly(length))
            assert response.question[0].name.to_text() == name + "."
            assert not response.flags & dns.flags.TC
        writer.close()


async def test_tcp_idle_connections_time_out() -> None:
    async with DnsServer(ZONE, "127.0.0.1", 0, tcp_timeout=0.3) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"\x00\x40partial")  # promises 64 bytes, sends 7
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_tcp_connection_limit() -> None:
    async with DnsServer(ZONE, "127.0.0.1", 0, max_tcp_connections=2) as srv:
        wire = query("master1.support.example.test").to_wire(prepend_length=True)
        held = []
        for _ in range(2):  # answered, so both are being served
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(wire)
            await asyncio.wait_for(reader.readexactly(2), 5)
            held.append((reader, writer))
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
        writer.close()
        assert srv.stats.tcp_refused == 1
        held[0][1].close()
        deadline = time.monotonic() + 5
        while True:  # a place frees up once the server sees the close
            try:
                response = await dns.asyncquery.tcp(
                    query("master2.support.example.test"), "127.0.0.1", port=srv.port, timeout=1
                )
                break
            except (EOFError, ConnectionError, dns.exception.Timeout):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        assert response.answer[0][0].to_text() == "127.0.1.2"
        held[1][1].close()


async def test_zone_can_be_replaced_while_running() -> None:
    async with DnsServer(ZONE, "127.0.0.1", 0) as srv:
        data = ZONE.to_dict()
        data["records"]["master1"] = {"A": ["127.0.1.99"]}
        srv.zone = DemoZone.from_dict(data)
        response = await dns.asyncquery.udp(query("master1.support.example.test"), "127.0.0.1",
                                            port=srv.port, timeout=5)
        assert response.answer[0][0].to_text() == "127.0.1.99"


# ---- the subprocess runner ------------------------------------------------------------------


def start_process(
    zone_file: Path, listen: str
) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atlas.demo.dns_server", "--zone-file", str(zone_file),
         "--listen", listen],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    if not ready:
        proc.kill()
        proc.communicate()
        pytest.fail("the DNS server printed no ready line within 20 s")
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the DNS server exited: {err.decode()}")
    return proc, json.loads(line)


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then wait (reading and closing its pipes); kill if it will not stop."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode


def test_subprocess_serves_reloads_and_stops(tmp_path: Path) -> None:
    zone_file = tmp_path / "zone.json"
    ZONE.write(zone_file)
    proc, ready = start_process(zone_file, "127.0.0.1:0")
    try:
        port = int(str(ready["port"]))
        assert ready == {"event": "ready", "host": "127.0.0.1", "port": port,
                         "origin": "support.example.test"}
        assert set(dig_short(port, "-b", ASIA_SOURCE, "traffic.support.example.test")) == (
            ASIA_TRAFFIC
        )
        data = ZONE.to_dict()
        data["records"]["master1"] = {"A": ["127.0.1.42"]}
        zone_file.write_text(json.dumps(data))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while dig_short(port, "master1.support.example.test") != ["127.0.1.42"]:
            assert time.monotonic() < deadline, "the zone file was not reloaded"
            time.sleep(0.05)
        zone_file.write_text("{broken")
        proc.send_signal(signal.SIGHUP)  # a bad file keeps the old zone
        assert dig_short(port, "master1.support.example.test", "+tcp") == ["127.0.1.42"]
    finally:
        code = stop_process(proc)
    assert code == 0
    assert_port_free(port)


def test_subprocess_refuses_a_bad_zone_file(tmp_path: Path) -> None:
    zone_file = tmp_path / "zone.json"
    zone_file.write_text(json.dumps({"origin": "z.test", "records": {"x": {"A": ["nope"]}}}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "atlas.demo.dns_server", "--zone-file", str(zone_file),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )
    assert done.returncode == 1
    assert "records.x.A[0]: 'nope' is not an IPv4 address" in done.stderr


@pytest.mark.parametrize("text", ["127.0.0.1", "localhost:53", "127.0.0.1:99999", "1.2.3:53"])
def test_listen_must_be_ip_and_port(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(text)
    assert parse_listen("[::1]:5353") == ("::1", 5353)
    assert parse_listen("127.0.0.53:0") == ("127.0.0.53", 0)
