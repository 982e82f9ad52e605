"""The representative's live view: the nodes in use, as the guide's test shows them.

Guide, "Run Test Connections": a representative console is connected to the master, to
its own home traffic node and to the customer's home node. The connection to its own
home node is the standby publisher of its screen, held for the whole session — before
Show My Screen, during it and after it — so the view lists it all along.
"""

from __future__ import annotations

import io

from rich.console import Console

from atlas.clients.live_view import LiveView

HOME = {"name": "us-1", "guid": "g-us"}
CUSTOMER_HOME = {"name": "asia-1", "guid": "g-asia"}


def screen(view: LiveView) -> str:
    out = io.StringIO()
    Console(file=out, width=160).print(view.render())
    return out.getvalue()


def row(text: str, label: str) -> str:
    """The table row whose first cell starts with ``label``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells and cells[0].startswith(label):
            return line
    raise AssertionError(f"no row {label!r} in:\n{text}")


def session_view() -> LiveView:
    view = LiveView(Console(file=io.StringIO(), width=160, force_terminal=False))
    view.emit("connected", master="wss://master1.example/client/control", client_id="1")
    view.emit("started", session_id="s1", home_node=HOME, nodes_in_use=[], streams=[
        {"stream": "screen:customer", "direction": "subscribe", "node": "asia-1",
         "node_guid": "g-asia"},
        {"stream": "screen:representative", "direction": "publish", "node": "us-1",
         "node_guid": "g-us"},
    ])
    for stream, direction, node in (("screen:customer", "subscribe", CUSTOMER_HOME),
                                    ("screen:representative", "publish", HOME)):
        view.emit("stream", stream=stream, direction=direction, node=node["name"],
                  node_guid=node["guid"], state="connected", reason="")
    return view


def test_the_standby_publisher_is_listed_on_the_home_node_before_show_my_screen() -> None:
    view = session_view()
    text = screen(view)
    own = row(text, "publish screen:representative")
    assert "(standby)" in own and "us-1 (home)" in own and "connected" in own
    viewer = row(text, "subscribe screen:customer")
    assert "asia-1" in viewer and "(home)" not in viewer and "(standby)" not in viewer
    assert "master1.example" in row(text, "control")
    view.close()


def test_show_my_screen_on_then_off_keeps_the_home_node_connection() -> None:
    view = session_view()
    view.emit("show_my_screen", session_id="s1", on=True, node=HOME)
    view.emit("stats", stream="screen:representative", direction="publish", node="us-1",
              frames=42, bytes=4096, fps=10.0, last_counter=42)
    sending = row(screen(view), "publish screen:representative")
    assert "(standby)" not in sending and "us-1 (home)" in sending and "42" in sending
    view.emit("show_my_screen", session_id="s1", on=False)
    text = screen(view)
    own = row(text, "publish screen:representative")  # still connected: standby again
    assert "(standby)" in own and "us-1 (home)" in own and "connected" in own
    assert "42" not in own  # the sending figures are gone with the sending
    assert "asia-1" in row(text, "subscribe screen:customer")
    view.close()


def test_a_lost_node_reads_as_lost() -> None:
    view = session_view()
    view.emit("stream", stream="screen:customer", direction="subscribe", node="asia-1",
              node_guid="g-asia", state="lost; retrying the same node",
              reason="connection to asia-1 lost (1006: connection lost without an end frame)")
    text = screen(view)
    assert "lost; retrying" in row(text, "subscribe screen:customer")
    assert "1006" in text  # the status line below the table says why
    view.close()


def test_a_new_session_starts_with_the_standby_again() -> None:
    view = session_view()
    view.emit("show_my_screen", session_id="s1", on=True, node=HOME)
    view.emit("ended", session_id="s1", reason="traffic_node_offline",
              message="Traffic node asia-1 went offline — restart the session.",
              node_name="asia-1", restart=True)
    view.emit("started", session_id="s2", home_node=HOME, nodes_in_use=[], streams=[
        {"stream": "screen:representative", "direction": "publish", "node": "us-1",
         "node_guid": "g-us"}])
    assert "(standby)" in row(screen(view), "publish screen:representative")
    view.close()
