"""What the customer and representative clients tell the person or script running them.

Every happening is one :class:`Report`: a name and a few fields. With ``--json`` each is
written as one JSON object per line on standard output, so tests and ``atlas cluster
test`` can read what happened::

    {"event": "connected", "time": "…Z", "client_id": "3", "master": "wss://…", …}
    {"event": "queued", "session_id": "s…", "queue_id": "general", "position": 1}
    {"event": "started", "session_id": "s…", "home_node": {"name": …, "guid": …},
     "nodes_in_use": [{"name": …, "guid": …, "role": "home"}, …]}
    {"event": "frame", "seq": 12, "counter": 12, "key": false, "bytes": 6731, …}
    {"event": "stats", "fps": 9.9, "latency_ms": 4.2, "bytes": 123456, …}
    {"event": "ended", "reason": "representative_ended", "message": "…", "restart": false}
    {"event": "failed", "error": "bad key", "code": "key_invalid", "exit_code": 3}

The event names and their fields are listed in :data:`EVENTS`. Without ``--json`` the
same reports are status lines for a person (:class:`TextReporter`); the representative's
live view (:mod:`atlas.clients.live_view`) shows them above its table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TextIO

EVENTS: Final[Mapping[str, str]] = {
    "connected": "authenticated on the master: client_id, master, kind, utc_offset_minutes",
    "disconnected": "the control connection was lost: reason, reconnecting",
    "queue": "the representative's queue: total, entries",
    "session_key": "a session key was generated (--generate-key): short_key, key_url, "
                   "expires (seconds since the epoch), expires_at, queue_id",
    "queued": "the customer waits: session_id, queue_id, position",
    "accepted": "a representative took the session: session_id, representative, customer",
    "directive": "the master said how to find the home node: method, target",
    "home_node": "landed on a home node by a directive: guid, name, target, method",
    "home_node_unreachable": "no directive target could be reached: method, reason",
    "started": "the session runs: session_id, home_node, nodes_in_use, streams",
    "stream": "a stream connection changed: stream, direction, node, state, reason",
    "show_my_screen": "Show My Screen turned on or off: session_id, on",
    "frame": "one frame received (viewer) or sent (publisher): stream, seq, counter, key, "
             "bytes, latency_ms, path (with --save-frames)",
    "stats": "once a second while receiving: stream, fps, latency_ms, bytes, frames, …",
    "chat": "a chat line: session_id, from, kind, text",
    "error": "the master refused a request: code, message, retry_after_seconds",
    "restart": "a session is restarted after its traffic node went offline: detail",
    "ended": "the session ended: session_id, reason, message, node_name, restart",
    "failed": "the client gave up: error, code, exit_code",
    "done": "the client stopped: reason, exit_code",
}


@dataclass(frozen=True, slots=True)
class Report:
    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_dict(self) -> dict[str, Any]:
        stamp = self.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"event": self.event, "time": stamp, **self.fields}


class Reporter(Protocol):
    def emit(self, event: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


class JsonReporter:
    """One JSON object per line (``--json``)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown report event {event!r}")
        self._out.write(json.dumps(Report(event, fields).as_dict(), default=str) + "\n")
        self._out.flush()

    def close(self) -> None:
        self._out.flush()


def describe(report: Report) -> str | None:
    """The status line for a person, or ``None`` for reports too frequent to print."""
    f = report.fields
    match report.event:
        case "connected":
            return (f"connected to {f.get('master')} as {f.get('kind')} "
                    f"(client {f.get('client_id')})")
        case "disconnected":
            again = "; reconnecting" if f.get("reconnecting") else ""
            return f"lost the connection to the master: {f.get('reason')}{again}"
        case "queue":
            return f"queue: {f.get('total')} waiting"
        case "session_key":
            return (f"session key {f.get('short_key')} — {f.get('key_url')} — queue "
                    f"{f.get('queue_id')}, valid until {f.get('expires_at')}")
        case "queued":
            pos = f.get("position")
            where = f" (position {pos})" if pos else ""
            return f"waiting in queue {f.get('queue_id')}{where} — session {f.get('session_id')}"
        case "accepted":
            return (f"session {f.get('session_id')} accepted: representative "
                    f"{f.get('representative')}, customer {f.get('customer')}")
        case "directive":
            return f"finding the home traffic node by {f.get('method')}: {f.get('target')}"
        case "home_node":
            return f"landed on traffic node {f.get('name')} ({f.get('target')})"
        case "home_node_unreachable":
            return f"no traffic node reachable by {f.get('method')}: {f.get('reason')}"
        case "started":
            home = f.get("home_node") or {}
            nodes = ", ".join(f"{n.get('name')} ({n.get('role')})"
                              for n in f.get("nodes_in_use") or ())
            return (f"session {f.get('session_id')} started — home traffic node "
                    f"{home.get('name')}; nodes in use: {nodes}")
        case "stream":
            why = f": {f.get('reason')}" if f.get("reason") else ""
            return (f"{f.get('direction')} {f.get('stream')} on {f.get('node')}: "
                    f"{f.get('state')}{why}")
        case "show_my_screen":
            return f"Show My Screen {'on' if f.get('on') else 'off'}"
        case "chat":
            return f"[chat] {f.get('from')}: {f.get('text')}"
        case "error":
            retry = f.get("retry_after_seconds")
            hint = f" (retry in {retry} s)" if retry else ""
            return f"refused: {f.get('message')}{hint}"
        case "restart":
            return f"restarting the session: {f.get('detail')}"
        case "ended":
            return f"session ended: {f.get('message')}"
        case "failed":
            return f"error: {f.get('error')}"
        case "done":
            return f"done: {f.get('reason')}"
        case "stats" if f.get("direction") == "publish":
            return (f"publishing {f.get('stream')} on {f.get('node')}: {f.get('frames')} frames "
                    f"sent, {f.get('bytes')} bytes")
        case "stats":
            lat = f.get("latency_ms")
            return (f"{f.get('stream')}: {f.get('frames')} frames, {f.get('fps')} fps, "
                    f"latency {lat if lat is not None else '–'} ms, {f.get('bytes')} bytes")
        case _:
            return None


class TextReporter:
    """Status lines for a person; ``failed`` goes to standard error."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, *,
                 show_stats: bool = True) -> None:
        self._out = out or sys.stdout
        self._err = err or sys.stderr
        self.show_stats = show_stats

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown report event {event!r}")
        if event == "stats" and not self.show_stats:
            return
        line = describe(Report(event, fields))
        if line is None:
            return
        stream = self._err if event == "failed" else self._out
        stream.write(line + "\n")
        stream.flush()

    def close(self) -> None:
        self._out.flush()
