"""What the clients report: JSON lines for scripts, status lines for people."""

from __future__ import annotations

import io
import json

import pytest

from atlas.clients.errors import SiteRefused
from atlas.clients.live_view import LiveView
from atlas.clients.report import EVENTS, JsonReporter, Report, TextReporter, describe
from atlas.protocol.control import Error, ErrorCode


def test_json_lines() -> None:
    out = io.StringIO()
    reporter = JsonReporter(out)
    reporter.emit("queued", session_id="s1", queue_id="general", position=1)
    reporter.emit("ended", session_id="s1", reason="customer_left", message="bye", restart=False)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["queued", "ended"]
    assert lines[0]["position"] == 1 and lines[0]["time"].endswith("Z")


def test_unknown_events_are_our_bug() -> None:
    with pytest.raises(ValueError, match="unknown report event"):
        JsonReporter(io.StringIO()).emit("exploded")
    with pytest.raises(ValueError):
        TextReporter(io.StringIO(), io.StringIO()).emit("exploded")


def test_every_event_has_a_line_or_is_deliberately_quiet() -> None:
    quiet = {"frame"}
    for event in EVENTS:
        line = describe(Report(event, {}))
        assert (line is None) == (event in quiet), event


def test_text_lines_and_failures_on_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    reporter = TextReporter(out, err)
    reporter.emit("started", session_id="s1", home_node={"name": "us-1", "guid": "g"},
                  nodes_in_use=[{"name": "us-1", "role": "home"}])
    reporter.emit("frame", seq=1)
    reporter.emit("failed", error="bad key: no such key", code="key_invalid", exit_code=3)
    assert out.getvalue() == "session s1 started — home traffic node us-1; nodes in use: " \
                             "us-1 (home)\n"
    assert err.getvalue() == "error: bad key: no such key\n"


def test_refusals_read_as_one_line_with_the_right_exit_code() -> None:
    cases = {
        ErrorCode.KEY_INVALID: ("bad key", 3), ErrorCode.KEY_EXPIRED: ("expired key", 3),
        ErrorCode.KEY_USED: ("used key", 3), ErrorCode.AUTH_FAILED: ("wrong password", 3),
        ErrorCode.RATE_LIMITED: ("rate-limited", 6),
        ErrorCode.NO_TRAFFIC_NODE: ("no traffic node available", 6),
    }
    for code, (label, exit_code) in cases.items():
        failure = SiteRefused(Error(code=code, message="the master's words.",
                                    retry_after_seconds=30))
        assert str(failure).startswith(f"{label}: the master's words")
        assert "\n" not in str(failure)
        assert failure.exit_code == exit_code
        assert failure.code == code.value
    busy = SiteRefused(Error(code=ErrorCode.NO_TRAFFIC_NODE, message="full",
                             retry_after_seconds=30))
    assert str(busy).endswith("(retry in 30 s)")
    said = SiteRefused(Error(code=ErrorCode.NO_TRAFFIC_NODE, message="full; retry in 9 s",
                             retry_after_seconds=9))
    assert str(said).count("retry in") == 1


def test_live_view_renders_a_session() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    view = LiveView(console)
    view.emit("connected", master="wss://master1.example/client/control", client_id="1")
    view.emit("started", session_id="s1", home_node={"name": "us-1", "guid": "g1"},
              nodes_in_use=[], streams=[{"stream": "screen:customer", "direction": "subscribe",
                                         "node": "eu-1", "node_guid": "g2"}])
    view.emit("stats", stream="screen:customer", direction="subscribe", fps=9.5,
              latency_ms=12.0, latency_avg_ms=10.0, latency_max_ms=30.0, bytes=2048,
              frames=40, skipped=0)
    view.close()
    screen = Console(file=io.StringIO(), width=120)
    screen.print(view.render())
    text = screen.file.getvalue()  # type: ignore[attr-defined]
    for expected in ("master1.example", "us-1", "eu-1", "subscribe screen:customer", "9.5",
                     "12.0 / 10.0 / 30.0", "2.0 KiB", "40"):
        assert expected in text, expected
