"""The representative's live view in the terminal (rich ``Live``).

A :class:`~atlas.clients.report.Reporter` that, instead of scrolling status lines, keeps
one screen up to date: the session and its home node, the nodes in use (guide, "Run Test
Connections": master, own home node, the customer's home node), and per stream the frame
rate, the latency (frame timestamp against now), bytes and frames — with the last few
status lines below.

The console's own screen (``publish screen:representative``) is connected to its home
node for the whole session, sending only while Show My Screen is on: the row stays,
labelled *standby* while it sends nothing. A node that is the session's home node is
labelled *home*.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from atlas.clients.report import EVENTS, Report, describe

LOG_LINES = 8
OWN_SCREEN = "publish screen:representative"
"""The console's own screen: on standby, connected to its home node, until Show My Screen."""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class LiveView:
    """Renders the reports as one live screen (see the module docstring)."""

    def __init__(self, console: Console | None = None, *, title: str = "Atlas") -> None:
        self.console = console or Console()
        self.title = title
        self.master = "–"
        self.master_name = "master"
        self.status = "connecting"
        self.session: str | None = None
        self.home: dict[str, Any] | None = None
        self.nodes: dict[str, dict[str, Any]] = {}  # "direction stream" → node
        self.stats: dict[str, dict[str, Any]] = {}  # "direction stream" → stats
        self.showing_my_screen = False
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self._live = Live(get_renderable=self.render, console=self.console,
                          refresh_per_second=4, transient=False)
        self._started = False

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown report event {event!r}")
        self._update(event, fields)
        if event not in ("stats", "frame"):
            line = describe(Report(event, fields))
            if line:
                self.log.append(line)
        if not self._started:
            self._started = True
            self._live.start()
        self._live.refresh()

    def _update(self, event: str, f: dict[str, Any]) -> None:
        match event:
            case "connected":
                self.master = str(f.get("master"))
                self.master_name = self.master.removeprefix("wss://").split("/", 1)[0]
                self.status = "online"
            case "queue":
                if self.session is None:
                    self.status = f"online — {f.get('total')} waiting in the queue"
            case "accepted":
                self.status = f"accepted: {f.get('customer')}"
            case "started":
                self.session = str(f.get("session_id"))
                self.home = f.get("home_node")
                self.status = "in session"
                self.nodes.clear()
                self.stats.clear()
                self.showing_my_screen = False
                for s in f.get("streams") or ():
                    self.nodes[f"{s['direction']} {s['stream']}"] = {
                        "name": s["node"], "guid": s["node_guid"], "state": "connecting"}
            case "stream":
                key = f"{f.get('direction')} {f.get('stream')}"
                self.nodes[key] = {"name": f.get("node"), "guid": f.get("node_guid"),
                                   "state": f.get("state")}
            case "stats":
                self.stats[f"{f.get('direction')} {f.get('stream')}"] = dict(f)
            case "ended":
                self.status = f"session ended: {f.get('message')}"
                self.session = None
            case "show_my_screen":
                # the connection stays (standby); only the sending stops
                self.showing_my_screen = bool(f.get("on"))
                if not self.showing_my_screen:
                    self.stats.pop(OWN_SCREEN, None)
            case "failed":
                self.status = f"error: {f.get('error')}"
            case "done":
                self.status = f"done: {f.get('reason')}"

    def render(self) -> RenderableType:
        info = Table.grid(padding=(0, 2))
        info.add_column(style="bold")
        info.add_column()
        info.add_row("master", self.master)
        info.add_row("status", self.status)
        if self.session:
            info.add_row("session", self.session)
        if self.home:
            info.add_row("home node", f"{self.home.get('name')}  {self.home.get('guid')}")
        streams = Table(title="nodes in use", expand=True)
        streams.add_column("stream", no_wrap=True)
        streams.add_column("node", no_wrap=True)
        for column in ("state", "fps", "latency ms (last/avg/max)", "bytes", "frames",
                       "skipped"):
            streams.add_column(column)
        streams.add_row("control", self.master_name, self.status.split(" — ")[0], "", "", "",
                        "", "")
        home_guid = self.home.get("guid") if self.home else None
        for key, node in self.nodes.items():
            s = self.stats.get(key, {})
            label = key
            if key == OWN_SCREEN and not self.showing_my_screen:
                label = f"{key} (standby)"
            name = f"{node.get('name')}"
            if home_guid is not None and node.get("guid") == home_guid:
                name += " (home)"
            lat = "–"
            if s.get("latency_ms") is not None:
                lat = f"{s['latency_ms']:.1f} / {s.get('latency_avg_ms') or 0:.1f} / " \
                      f"{s.get('latency_max_ms') or 0:.1f}"
            streams.add_row(label, name, str(node.get("state")),
                            f"{s.get('fps', 0):.1f}" if s else "–", lat,
                            _size(float(s.get("bytes", 0))) if s else "–",
                            str(s.get("frames", "–")), str(s.get("skipped", "–")))
        log = Text("\n".join(self.log), style="dim")
        return Group(Panel(info, title=self.title), streams, log)

    def close(self) -> None:
        if self._started:
            self._live.refresh()
            self._live.stop()
