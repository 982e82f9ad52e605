"""``atlas customer`` and ``atlas rep`` as real processes against a real ``atlas serve``.

A standalone node is the master and its own fallback traffic node (DESIGN.md §3), so a
whole session runs on one node: the customer publishes its test pattern there, the
representative accepts, watches, saves frames, chats and shows its screen. The session
key comes from the Command API (``generate_session_key``) with an API account, as an
integration would get it. What happened is read back from the ``--json`` lines and the
saved frames (each JPEG's comment carries the publisher's frame counter).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from atlas.clients.screen import TestPattern
from atlas.clients.screen_codec import parse_comment
from atlas.clients.streams import (
    FrameReceived,
    FrameSent,
    ScreenPublisher,
    StreamDown,
    StreamFinished,
    StreamUp,
    StreamViewer,
)
from atlas.node.datadir import DataDir
from atlas.protocol.control import StreamDirection
from atlas.protocol.frames import CloseCode
from atlas.store import representatives as reps
from atlas.store.api_accounts import Permission, create_account
from atlas.store.db import Database
from tests.clients.test_streams import FAST, Events, network, target
from tests.conftest import NodeFactory, RunningNode
from tests.relay.conftest import StartRelay

pytestmark = [pytest.mark.timeout(180)]
REP_PASSWORD = "rep password 12345"
WAIT = 90.0


@dataclass
class Site:
    node: RunningNode
    client_id: str
    secret: str

    @property
    def url(self) -> str:
        return self.node.url

    def session_key(self, queue_id: str = "general") -> str:
        """A fresh key from the Command API (OAuth client credentials, then the action)."""
        ctx = self.node.info.ssl_context()
        body = urllib.parse.urlencode({"grant_type": "client_credentials"}).encode()
        req = urllib.request.Request(f"{self.url}/oauth2/token", data=body)
        import base64

        basic = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
        req.add_header("Authorization", f"Basic {basic}")
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            token = json.loads(r.read())["access_token"]
        query = urllib.parse.urlencode({"action": "generate_session_key", "type": "support",
                                        "queue_id": queue_id})
        req = urllib.request.Request(f"{self.url}/api/command?{query}")
        req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            xml = r.read().decode()
        start = xml.index("<short_key>") + len("<short_key>")
        return xml[start:xml.index("</short_key>")]


@pytest.fixture
def site(node_factory: NodeFactory, node_runner: Callable[..., RunningNode]) -> Site:
    info = node_factory("master1")
    db = Database(DataDir(info.data_dir).db_file)
    try:
        reps.create(db, "alice", "Alice Rep", REP_PASSWORD)
        account = create_account(db, "e2e", frozenset({Permission.COMMAND_FULL}))
    finally:
        db.close()
    node = node_runner(info)
    return Site(node, account.account.client_id, account.client_secret)


def atlas(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("ATLAS_PASSWORD", "ATLAS_DNS", "ATLAS_SITE")}
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "atlas", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env)


def finish(proc: subprocess.Popen[str], timeout: float = WAIT) -> tuple[int, list[dict[str, Any]],
                                                                       str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"timed out; stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}") \
            from None
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return proc.returncode, events, err


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def customer(site: Site, key: str, *extra: str) -> subprocess.Popen[str]:
    return atlas("customer", "--site", site.url, "--key", key, "--ca-file",
                 str(site.node.ca_file), "--json", "--duration", "80", *extra)


def rep(site: Site, *extra: str, password: str = REP_PASSWORD) -> subprocess.Popen[str]:
    return atlas("rep", "--site", site.url, "--user", "alice", "--ca-file",
                 str(site.node.ca_file), "--json", "--duration", "80", *extra,
                 env={"ATLAS_PASSWORD": password})


def test_a_session_end_to_end(site: Site, tmp_path: Path) -> None:
    key = site.session_key()
    frames_dir = tmp_path / "frames"
    cust = customer(site, key, "--tz-offset", "+09:00", "--hostname", "customer-pc")
    rep_proc = rep(site, "--accept-next", "--frames", "30", "--save-frames", str(frames_dir),
                   "--chat", "hello from Alice")
    rep_code, rep_events, rep_err = finish(rep_proc)
    cust_code, cust_events, cust_err = finish(cust)
    assert rep_code == 0, rep_err
    assert cust_code == 0, cust_err
    guid = site.node.info.identity.guid

    # the representative: logged in, accepted, watched on the customer's home node
    assert of(rep_events, "connected")[0]["kind"] == "representative"
    (accepted,) = of(rep_events, "accepted")
    assert accepted["customer"] == "customer-pc"
    (started,) = of(rep_events, "started")
    assert started["home_node"]["guid"] == guid  # standalone: the master is the node
    assert {n["guid"] for n in started["nodes_in_use"]} == {guid}
    # it views the customer's screen and holds its own publisher on its home node, on
    # standby: without Show My Screen it never sends a frame
    assert started["streams"] == [
        {"stream": "screen:customer", "direction": "subscribe", "node": "master1",
         "node_guid": guid},
        {"stream": "screen:representative", "direction": "publish", "node": "master1",
         "node_guid": guid}]
    own = [e for e in of(rep_events, "stream") if e["stream"] == "screen:representative"]
    assert [(e["direction"], e["state"]) for e in own] == [("publish", "connected")]
    assert not [e for e in of(rep_events, "stats") + of(rep_events, "show_my_screen")
                if e.get("direction") == "publish" or "on" in e]
    frames = of(rep_events, "frame")
    assert len(frames) == 30
    assert all(f["direction"] == "subscribe" for f in frames)
    counters = [f["counter"] for f in frames]
    assert frames[0]["key"] and counters == list(range(counters[0], counters[0] + 30))
    assert [f["seq"] for f in frames] == list(range(frames[0]["seq"], frames[0]["seq"] + 30))
    assert all(f["latency_ms"] < 5000 for f in frames)
    assert of(rep_events, "done")[-1]["reason"] == "--frames 30 received"

    # every saved frame is a picture with its counter, in order
    saved = sorted(frames_dir.glob("frame-*.jpg"))
    assert [Path(f["path"]).name for f in frames] == [p.name for p in saved]
    saved_counters = []
    for path in saved:
        with Image.open(path) as img:
            assert img.size == (640, 360)
            meta = parse_comment(img.info.get("comment"))
        assert meta is not None
        saved_counters.append(meta[0])
    assert saved_counters == counters
    assert saved[0].name.endswith("-key.jpg")

    # the customer: queued, started on its home node, got the chat, ended by the rep
    assert of(cust_events, "connected")[0]["utc_offset_minutes"] == 540
    assert of(cust_events, "queued")[0]["queue_id"] == "general"
    (cstarted,) = of(cust_events, "started")
    assert cstarted["session_id"] == started["session_id"]
    assert cstarted["streams"][0]["direction"] == "publish"
    chat = of(cust_events, "chat")
    assert [(c["from"], c["text"]) for c in chat] == [("Alice Rep", "hello from Alice")]
    (ended,) = of(cust_events, "ended")
    assert ended["reason"] == "representative_ended" and not ended["restart"]

    # the key was used: a second customer with it is refused
    again = customer(site, key)
    code, events, err = finish(again)
    assert code == 3
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("error: used key:")
    assert of(events, "failed")[0]["code"] == "key_used"


def test_show_my_screen(site: Site) -> None:
    key = site.session_key("rep_username:alice")
    cust = customer(site, key, "--frames", "1000")
    rep_proc = rep(site, "--accept-next", "--show-my-screen", "--show-my-screen-seconds", "2",
                   "--duration", "5")
    rep_code, rep_events, rep_err = finish(rep_proc)
    cust_code, cust_events, cust_err = finish(cust)
    assert rep_code == 0, rep_err
    assert cust_code == 0, cust_err
    assert [e["on"] for e in of(rep_events, "show_my_screen")] == [True, False]
    assert [e["on"] for e in of(cust_events, "show_my_screen")] == [True, False]
    # the customer watched the representative's screen on the rep's home node
    watched = [e for e in of(cust_events, "frame")
               if e["stream"] == "screen:representative" and e["direction"] == "subscribe"]
    assert len(watched) >= 5
    counters = [e["counter"] for e in watched]
    assert counters == list(range(counters[0], counters[0] + len(counters)))
    # the console connected its publisher once, at the start, and kept it after "off"
    # (the session went on for 3 s more); the customer only ever viewed that stream
    own = [(e["direction"], e["state"]) for e in of(rep_events, "stream")
           if e["stream"] == "screen:representative"]
    assert own == [("publish", "connected")]
    (on, off) = of(rep_events, "show_my_screen")
    assert on["node"]["name"] == of(rep_events, "started")[0]["home_node"]["name"]
    theirs = {(e["direction"], e["stream"]) for e in of(cust_events, "stream")}
    assert theirs == {("publish", "screen:customer"), ("subscribe", "screen:representative")}
    # frames went out only while Show My Screen was on (after "off", at most the one or
    # two already on their way; the session ran on for 3 s)
    sent = [e for e in of(rep_events, "frame") if e["direction"] == "publish"]
    assert len(sent) >= 5 and rep_events.index(on) < rep_events.index(sent[0])
    assert len([e for e in sent if rep_events.index(e) > rep_events.index(off)]) <= 2


def test_queue_personal_leaves_the_general_queue_alone(site: Site) -> None:
    general = customer(site, site.session_key(), "--duration", "30", "--no-report-frames")
    try:
        # the general customer queued first; the console still takes only its own
        assert _queued(general)
        mine = customer(site, site.session_key("rep_username:alice"), "--frames", "3",
                        "--no-report-frames")
        rep_proc = rep(site, "--accept-next", "--queue", "personal", "--frames", "3")
        rep_code, rep_events, rep_err = finish(rep_proc)
        mine_code, mine_events, mine_err = finish(mine)
        assert rep_code == 0, rep_err
        assert mine_code == 0, mine_err
        (accepted,) = of(rep_events, "accepted")
        (started,) = of(mine_events, "started")
        assert accepted["session_id"] == started["session_id"]
        assert general.poll() is None  # still waiting in the general queue
    finally:
        general.terminate()
        general.communicate(timeout=WAIT)


def _queued(proc: subprocess.Popen[str]) -> bool:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{") and json.loads(line)["event"] == "queued":
            return True
    return False


@pytest.mark.parametrize("queue", ["mine", "rep:", "rep_username:", "general ; x"])
def test_a_bad_queue_is_a_usage_error(site: Site, queue: str) -> None:
    code, _events, err = finish(atlas("rep", "--site", site.url, "--user", "alice",
                                      "--queue", queue, env={"ATLAS_PASSWORD": REP_PASSWORD}))
    assert code == 2 and err.startswith(f"error: --queue {queue!r}: expected personal"), err


@pytest.mark.parametrize(("args", "env_password", "code", "line"), [
    (["customer", "--key", "0000000"], None, 3, "error: bad key:"),
    (["rep", "--user", "alice"], "wrong password 1", 3, "error: wrong password:"),
    (["rep", "--user", "nobody"], REP_PASSWORD, 3, "error: wrong password:"),
])
def test_refusals_are_one_line_and_an_exit_code(site: Site, args: list[str],
                                                env_password: str | None, code: int,
                                                line: str) -> None:
    proc = atlas(*args, "--site", site.url, "--ca-file", str(site.node.ca_file),
                 env={"ATLAS_PASSWORD": env_password} if env_password else None)
    got, _events, err = finish(proc)
    assert got == code
    assert len(err.strip().splitlines()) == 1 and err.startswith(line), err


def test_untrusted_certificate_says_pass_ca_file(site: Site) -> None:
    proc = atlas("customer", "--site", site.url, "--key", "1234567")
    code, _events, err = finish(proc)
    assert code == 5
    assert err.startswith("error: certificate not trusted: pass --ca-file"), err
    assert len(err.strip().splitlines()) == 1


def test_sigterm_leaves_cleanly(site: Site) -> None:
    key = site.session_key()
    cust = customer(site, key)
    assert cust.stdout is not None
    first = json.loads(cust.stdout.readline())
    assert first["event"] == "connected"
    assert json.loads(cust.stdout.readline())["event"] == "queued"
    lister = rep(site, "--list-queue")
    code, events, err = finish(lister)
    assert code == 0, err
    (queue,) = of(events, "queue")
    assert queue["total"] == 1 and queue["entries"][0]["queue_id"] == "general"
    cust.send_signal(15)
    code, events, err = finish(cust)
    assert code == 0, err
    assert of(events, "done")[-1]["reason"] == "stopped by SIGTERM"
    # the master saw the customer go: the queue is empty again
    code, events, err = finish(rep(site, "--list-queue"))
    assert of(events, "queue")[0]["total"] == 0


# --- the console's standby publisher, through a real relay -----------------------------


async def test_a_standby_publisher_holds_its_node_and_sends_only_when_told(
        start_relay: StartRelay) -> None:
    """The representative's ``screen:representative`` publisher: connected from the
    session's start (so its home node lists it) but sending nothing; a viewer that joins
    before the first key frame waits; "on" sends from a key frame, "off" stops sending
    and keeps the connection."""
    relay = await start_relay()
    sent, seen = Events(), Events()
    opened: list[str] = []

    def source() -> TestPattern:
        opened.append("screen")
        return TestPattern((160, 90))

    publisher = ScreenPublisher(target(relay, StreamDirection.PUBLISH), network=network(relay),
                                on_event=sent, source_factory=source, fps=30, policy=FAST,
                                report_frames=True, sending=False)
    viewer = StreamViewer(target(relay, StreamDirection.SUBSCRIBE, participant="cust"),
                          network=network(relay), on_event=seen, decode=True, policy=FAST)
    tasks = [asyncio.create_task(publisher.run())]
    try:
        await sent.wait(lambda: bool(sent.of(StreamUp)))
        tasks.append(asyncio.create_task(viewer.run()))
        await seen.wait(lambda: bool(seen.of(StreamUp)))
        await asyncio.sleep(0.5)  # on standby: nothing sent, nothing opened, nothing seen
        assert (sent.of(FrameSent), seen.of(FrameReceived), opened) == ([], [], [])
        stats = relay.service.hub.stats()
        assert (stats["publishers"], stats["subscribers"]) == (1, 1)

        publisher.start_sending()
        await seen.wait(lambda: len(seen.of(FrameReceived)) >= 5)
        first = seen.of(FrameReceived)[0]
        assert isinstance(first, FrameReceived) and first.key and first.counter == 1
        assert opened == ["screen"]

        publisher.pause_sending()
        await asyncio.sleep(0.2)
        count = len(sent.of(FrameSent))
        await asyncio.sleep(0.5)
        assert len(sent.of(FrameSent)) == count  # stopped …
        assert not sent.of(StreamDown) and not sent.of(StreamFinished)  # … still connected
        assert not seen.of(StreamDown)

        publisher.start_sending()  # on again: a fresh key frame, the counter goes on
        await sent.wait(lambda: len(sent.of(FrameSent)) >= count + 3)
        again = sent.of(FrameSent)[count]
        assert isinstance(again, FrameSent) and again.key and again.counter == count + 1
        assert len(sent.of(StreamUp)) == 1  # one connection all along
    finally:
        publisher.stop()
        viewer.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    assert len(sent.of(StreamFinished)) == 1  # ended by us, when the session ended


async def test_a_standby_publisher_reconnects_to_the_same_node(
        start_relay: StartRelay) -> None:
    """A node that ends the standby connection (it restarts): the publisher, sending
    nothing, still notices and reconnects to the same node."""
    relay = await start_relay()
    sent = Events()
    publisher = ScreenPublisher(target(relay, StreamDirection.PUBLISH), TestPattern((64, 48)),
                                network=network(relay), on_event=sent, policy=FAST,
                                sending=False)
    task = asyncio.create_task(publisher.run())
    try:
        await sent.wait(lambda: bool(sent.of(StreamUp)))
        relay.service.hub.close_all(CloseCode.GOING_AWAY, "the traffic node is restarting")
        await sent.wait(lambda: len(sent.of(StreamUp)) == 2)
        assert sent.of(StreamDown)
        assert publisher.frames_sent == 0
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 20)
