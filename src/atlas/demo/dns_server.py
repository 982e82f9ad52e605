"""The local demo's authoritative DNS server: a geo-DNS stand-in (design section 9).

:func:`respond` / :func:`answer` are the pure core: one query's wire bytes and its
source address in, the response's wire bytes out (or ``None``: drop it). The zone and
what it answers live in :mod:`atlas.demo.zone`; here are the DNS message rules:

* QR set or shorter than a header: dropped (never answer a response; RFC 1035 §4.1.1).
* Unparsable, or not exactly one question (RFC 9619): FORMERR, header only.
* Opcode other than QUERY: NOTIMP. EDNS version above 0: BADVERS (RFC 6891 §6.1.3).
* Class other than IN, zone transfers, names outside the zone: REFUSED.
* In the zone: AA set, RA never set (authoritative only), RD echoed.
* UDP answers larger than 512 bytes — or, with EDNS, than the requester's payload size
  (capped at our :data:`EDNS_PAYLOAD`) — are truncated at a record-set boundary with TC
  set (RFC 1035 §4.2.1, RFC 6891 §7, RFC 2181 §9); TCP answers may be up to 65535.

:class:`DnsServer` is the thin asyncio adapter, UDP and TCP (RFC 7766: 2-byte length
prefix, several queries per connection) on one address and port, with bounds: at most
``max_tcp_connections`` TCP connections (more are closed at once), an idle/read/write
timeout per connection, and a cap on UDP replies waiting in the send buffer. ::

    zone = DemoZone.from_dict({...})
    async with DnsServer(zone, "127.0.0.53", 5353) as server:
        ...                          # server.port is the bound port (useful with 0)

As a process (the demo starts it like this; SIGTERM/SIGINT stop it, SIGHUP rereads the
zone file)::

    python -m atlas.demo.dns_server --zone-file zone.json --listen 127.0.0.53:5353

which prints one JSON line on stdout once it answers
(``{"event": "ready", "host": …, "port": …, "origin": …}``) and logs JSON on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, cast

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from atlas.demo.zone import DemoZone, Lookup, ZoneError, lookup

log = logging.getLogger("atlas.demo.dns_server")  # the same when run with -m

Transport = Literal["udp", "tcp"]

EDNS_PAYLOAD = 1232  # our UDP payload size (DNS Flag Day 2020)
_PLAIN_UDP_LIMIT = 512  # RFC 1035 §4.2.1
_TCP_LIMIT = 65535
_HEADER = struct.Struct("!HHHHHH")
_QR = int(dns.flags.QR)
_RD = int(dns.flags.RD)
_OPCODE_MASK = 0x7800
_NO_ANSWER_TYPES = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})


@dataclass(frozen=True, slots=True)
class Reply:
    """A response's wire bytes, its rcode and a one-line account of why (for the log)."""

    wire: bytes
    rcode: dns.rcode.Rcode
    explanation: str
    truncated: bool = False


def answer(
    zone: DemoZone, query_wire: bytes, source_ip: str, transport: Transport = "udp"
) -> bytes | None:
    """The response to ``query_wire`` sent from ``source_ip``; ``None`` means drop it."""
    reply = respond(zone, query_wire, source_ip, transport)
    return None if reply is None else reply.wire


def respond(
    zone: DemoZone, query_wire: bytes, source_ip: str, transport: Transport = "udp"
) -> Reply | None:
    """:func:`answer` with the rcode and explanation. Never raises for any input bytes."""
    if len(query_wire) < _HEADER.size:
        return None
    query_id, flags = struct.unpack_from("!HH", query_wire)
    if flags & _QR:
        return None
    opcode = dns.opcode.from_flags(flags)
    if opcode != dns.opcode.QUERY:
        why = f"opcode {dns.opcode.to_text(opcode)}"
        return _header_only(query_id, flags, dns.rcode.NOTIMP, why)
    try:
        query = dns.message.from_wire(query_wire)
    except Exception as exc:  # any bytes at all may arrive: every parse failure is FORMERR
        return _header_only(query_id, flags, dns.rcode.FORMERR, f"unparsable query: {exc!r}")
    try:
        return _respond(zone, query, source_ip, transport)
    except Exception as exc:  # a bug of ours must cost one answer, not the server
        return _header_only(query_id, flags, dns.rcode.SERVFAIL, f"internal error: {exc!r}")


def _respond(
    zone: DemoZone, query: dns.message.Message, source_ip: str, transport: Transport
) -> Reply:
    if len(query.question) != 1:
        return _header_only(
            query.id, query.flags, dns.rcode.FORMERR, f"{len(query.question)} questions"
        )
    response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
    question = query.question[0]
    asked = f"{question.name} {dns.rdatatype.to_text(question.rdtype)}"
    if query.edns > 0:
        response.set_rcode(dns.rcode.BADVERS)
        response.question = []
        return _render(response, query, transport, f"{asked}: EDNS version {query.edns}")
    if question.rdclass != dns.rdataclass.IN:
        response.set_rcode(dns.rcode.REFUSED)
        cls = dns.rdataclass.to_text(question.rdclass)
        return _render(response, query, transport, f"{asked}: class {cls} not served")
    if question.rdtype in _NO_ANSWER_TYPES:
        response.set_rcode(dns.rcode.REFUSED)
        return _render(response, query, transport, f"{asked}: no zone transfers")
    result: Lookup = lookup(zone, question.name, question.rdtype, source_ip)
    response.set_rcode(result.rcode)
    if result.authoritative:
        response.flags |= dns.flags.AA
    response.answer = list(result.answer)
    response.authority = list(result.authority)
    response.additional = list(result.additional)
    return _render(response, query, transport, f"{asked}: {result.describe()}")


def _render(
    response: dns.message.Message,
    query: dns.message.Message,
    transport: Transport,
    explanation: str,
) -> Reply:
    if transport == "tcp":
        limit = _TCP_LIMIT
    elif query.edns < 0:
        limit = _PLAIN_UDP_LIMIT
    else:
        limit = max(_PLAIN_UDP_LIMIT, min(query.payload, EDNS_PAYLOAD))
    wire = response.to_wire(max_size=limit, prefer_truncation=True)
    (flags,) = struct.unpack_from("!H", wire, 2)
    truncated = bool(flags & dns.flags.TC)
    if truncated:
        explanation += f" (truncated to {limit} bytes)"
    return Reply(wire, response.rcode(), explanation, truncated)


def _header_only(query_id: int, query_flags: int, rcode: dns.rcode.Rcode, why: str) -> Reply:
    """A response with no sections: same id and opcode, QR set, RD echoed."""
    flags = _QR | (query_flags & (_OPCODE_MASK | _RD)) | (int(rcode) & 0xF)
    return Reply(_HEADER.pack(query_id, flags, 0, 0, 0, 0), rcode, why)


# ---- the asyncio adapter -------------------------------------------------------------------


@dataclass
class ServerStats:
    """Counters since start (for the log, the tests and a curious operator)."""

    udp_queries: int = 0
    tcp_queries: int = 0
    dropped: int = 0  # not answered: responses, runts, a full send buffer
    errors: int = 0  # FORMERR / NOTIMP / SERVFAIL answers
    truncated: int = 0
    tcp_refused: int = 0  # connections closed at once: over max_tcp_connections
    rcodes: dict[str, int] = field(default_factory=dict)


class DnsServer:
    """Serve one :class:`DemoZone` over UDP and TCP on ``host:port``.

    ``port=0`` picks a port free for both protocols. ``zone`` may be replaced while
    running (the next query sees the new zone). Use as ``async with``, or
    :meth:`start` / :meth:`close`; :meth:`serve_forever` waits until closed.
    """

    def __init__(
        self,
        zone: DemoZone,
        host: str = "127.0.0.1",
        port: int = 53,
        *,
        max_tcp_connections: int = 64,
        tcp_timeout: float = 10.0,
        udp_send_buffer_limit: int = 256 * 1024,
        backlog: int = 128,
    ) -> None:
        self.zone = zone
        self.host = host
        self.port = port
        self.max_tcp_connections = max_tcp_connections
        self.tcp_timeout = tcp_timeout
        self.udp_send_buffer_limit = udp_send_buffer_limit
        self.backlog = backlog
        self.stats = ServerStats()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closed: asyncio.Event | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind UDP and TCP; OSError (nothing left bound) if the address is taken."""
        if self._udp is not None:
            raise RuntimeError("DNS server already started")
        self._closed = asyncio.Event()
        attempts = 20 if self.port == 0 else 1
        for attempt in range(attempts):
            udp = await self._bind_udp(self.port)
            port = int(udp.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_tcp_connection, self.host, port, backlog=self.backlog
                )
            except OSError:
                await _close_udp(udp)
                if attempt == attempts - 1:
                    raise
                continue
            self._udp, self.port = udp, port
            break
        log.info(
            "DNS server listening",
            extra={"listen": f"{self.host}:{self.port}", "zone": str(self.zone.origin)},
        )

    async def _bind_udp(self, port: int) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.host, port), family=family
        )
        return transport

    async def close(self) -> None:
        """Stop listening, close open TCP connections and wait for them to finish."""
        if self._tcp is not None:
            self._tcp.close()
        if self._udp is not None:
            await _close_udp(self._udp)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
        self._udp = self._tcp = None
        if self._closed is not None and not self._closed.is_set():
            self._closed.set()
            log.info("DNS server stopped", extra={"listen": f"{self.host}:{self.port}"})

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called (start first if needed)."""
        if self._udp is None:
            await self.start()
        assert self._closed is not None
        await self._closed.wait()

    def reply(self, data: bytes, source_ip: str, transport: Transport) -> bytes | None:
        """Answer one query with the current zone, counting it; never raises."""
        try:
            reply = respond(self.zone, data, source_ip, transport)
        except Exception:  # respond() promises not to raise; if it does, drop and log
            log.exception("DNS answer failed", extra={"source": source_ip})
            reply = None
        if reply is None:
            self.stats.dropped += 1
            return None
        name = dns.rcode.to_text(reply.rcode)
        self.stats.rcodes[name] = self.stats.rcodes.get(name, 0) + 1
        if reply.rcode in (dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.SERVFAIL):
            self.stats.errors += 1
        if reply.rcode == dns.rcode.SERVFAIL:
            log.error("DNS answer failed", extra={"source": source_ip, "why": reply.explanation})
        self.stats.truncated += reply.truncated
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "DNS query",
                extra={"source": source_ip, "transport": transport, "why": reply.explanation},
            )
        return reply.wire

    async def _serve_tcp_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is None or len(self._connections) >= self.max_tcp_connections:
            self.stats.tcp_refused += 1
            writer.close()
            return
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        try:
            while True:
                async with asyncio.timeout(self.tcp_timeout):
                    header = await reader.readexactly(2)
                    (length,) = struct.unpack("!H", header)
                    data = await reader.readexactly(length)
                self.stats.tcp_queries += 1
                wire = self.reply(data, source, "tcp")
                if wire is None:
                    return
                writer.write(struct.pack("!H", len(wire)) + wire)
                async with asyncio.timeout(self.tcp_timeout):
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()


async def _close_udp(transport: asyncio.DatagramTransport) -> None:
    """Close and wait until the socket is really closed (asyncio closes it a step later)."""
    protocol = transport.get_protocol()
    transport.close()
    if isinstance(protocol, _UdpProtocol):
        await asyncio.shield(protocol.lost)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # In Python 3.11 the selector's datagram transport does not subclass it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        server = self.server
        server.stats.udp_queries += 1
        wire = server.reply(data, str(addr[0]), "udp")
        if wire is None or self.transport is None:
            return
        if _buffered(self.transport) > server.udp_send_buffer_limit:
            server.stats.dropped += 1  # a client that outpaces us retries; memory stays bounded
            return
        self.transport.sendto(wire, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS UDP error", extra={"error": str(exc)})


def _buffered(transport: asyncio.DatagramTransport) -> int:
    """Bytes of replies the kernel has not taken yet (asyncio buffers them unbounded)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if callable(size) else 0


# ---- the subprocess runner ------------------------------------------------------------------


async def run(zone_file: Path, host: str, port: int) -> None:
    """Serve ``zone_file`` until SIGTERM or SIGINT; SIGHUP rereads it (bad file: kept old)."""
    zone = DemoZone.load(zone_file)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            server.zone = DemoZone.load(zone_file)
        except ZoneError as exc:
            log.error("zone file not reloaded", extra={"zone_file": str(zone_file),
                                                       "error": str(exc)})
            return
        log.info("zone file reloaded", extra={"zone_file": str(zone_file)})

    async with DnsServer(zone, host, port) as server:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)
        ready = {"event": "ready", "host": server.host, "port": server.port,
                 "origin": zone.origin.to_text(omit_final_dot=True)}
        print(json.dumps(ready), flush=True)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.53:5353`` (or ``[::1]:5353``) → host, port; port 0 = any free port."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected ip:port such as 127.0.0.53:5353")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise ValueError(f"--listen {text!r}: {host!r} is not an IP address") from None
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    from atlas.node.logs import setup_logging

    parser = argparse.ArgumentParser(
        prog="python -m atlas.demo.dns_server",
        description="Authoritative DNS server for the Atlas demo zone (geo-DNS stand-in).",
    )
    parser.add_argument("--zone-file", required=True, type=Path, help="JSON zone file")
    parser.add_argument("--listen", default="127.0.0.53:53", help="ip:port (UDP and TCP)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(args.log_level)
    try:
        asyncio.run(run(args.zone_file, host, port))
    except ZoneError as exc:
        print(f"zone file {args.zone_file}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
