"""Publishing and viewing one stream of a session, with the guide's reconnect rule.

DESIGN.md §2: a participant *publishes* its own stream on its home traffic node; a
viewer connects to the *publisher's* home node. Each stream connection is authorised by
the grant the master sent (``session_started`` / ``stream_grant``: node and token).

A stream connection that drops is re-made **to the same node** (guide, "Check
Connections": "the reconnect always is attempted to the same traffic node"), with
backoff, for at most :attr:`RetryPolicy.same_node_window` seconds; after that the runner
reports :class:`StreamLost` and stops, and the session logic asks the master for what
to do next (it ends the session with a restart advice, then hands out a new home node:
no client is stranded on a dead node). A fresh grant from the master
(:meth:`StreamRunner.replace_target`) is used for the next attempt at once.

Stream tokens only open connections for a while after they are issued (the master's
``token_ttl_seconds``, 2 minutes): an open connection outlives its token, but one that
drops late in a long session cannot be re-made with it. So before (re)connecting with a
token that has expired or is about to (:attr:`StreamTarget.connect_by`, counted from
when the grant arrived), and when the node refuses a token as expired, the runner asks
its ``refresh`` callback — the session sends ``refresh_grant`` to the master — and
waits for the fresh grant (:meth:`~StreamRunner.replace_target`) or the master's
refusal (:meth:`~StreamRunner.grant_refused`: the runner stops, the master's word on the
session follows).

A connection that breaks without an end (close code 1006: the node crashed or was
killed, the network failed) is reported as lost (:attr:`StreamDown.lost`), unlike one
the node or the publisher ended with a reason.

A publisher may be held on **standby** (``sending=False``): connected to its home node,
so the node lists it (guide: the representative console is connected to its own home
node for the whole session), but capturing and sending nothing until
:meth:`ScreenPublisher.start_sending` (Show My Screen on); :meth:`~ScreenPublisher.
pause_sending` goes back to standby and keeps the connection. Viewers of a stream whose
publisher sends nothing yet simply wait for its first key frame.

The bytes: :mod:`atlas.relay.client` (raw ``atlas-stream/1`` by default); the pictures:
:mod:`atlas.clients.screen` and :mod:`atlas.clients.screen_codec`, encoded and decoded
in a worker thread so the event loop never waits for Pillow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from atlas.broker.stream_tokens import connect_window
from atlas.clients.errors import SessionFailed
from atlas.clients.network import NetworkSettings, connect_failure, https_base_of
from atlas.clients.screen import ScreenSource
from atlas.clients.screen_codec import (
    CodecError,
    DecodedFrame,
    EncodedFrame,
    NeedKeyFrame,
    ScreenDecoder,
    ScreenEncoder,
)
from atlas.clients.stats import FrameStats
from atlas.protocol.control import NodeRef, StreamDirection, StreamGrant, StreamKind
from atlas.protocol.frames import CloseCode, Frame, FrameType
from atlas.relay.client import (
    ABNORMAL_CLOSURE,
    StreamClosed,
    StreamPublisher,
    StreamRefused,
    StreamSubscriber,
    Transport,
    now_us,
    publish,
    stream_url,
    subscribe,
)

log = logging.getLogger("atlas.clients.streams")

DEFAULT_FPS: Final = 10.0
MAX_FPS: Final = 60.0


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """Where and with what permission to connect one stream.

    ``connect_by`` (monotonic seconds, ``None``: unknown) is when the token stops
    opening connections, counted from when the grant arrived."""

    session_id: str
    stream: StreamKind
    direction: StreamDirection
    node: NodeRef
    token: str
    connect_by: float | None = None

    @classmethod
    def from_grant(cls, session_id: str, grant: StreamGrant,
                   received_at: float | None = None) -> StreamTarget:
        """The target of ``grant``, which arrived at ``received_at`` (monotonic; now)."""
        window = connect_window(grant.token)
        arrived = time.monotonic() if received_at is None else received_at
        return cls(session_id, grant.stream, grant.direction, grant.node, grant.token,
                   None if window is None else arrived + window)

    def expires_within(self, margin: float, now: float | None = None) -> bool:
        """Whether the token stops opening connections within ``margin`` seconds."""
        if self.connect_by is None:
            return False
        return (time.monotonic() if now is None else now) >= self.connect_by - margin

    @property
    def url(self) -> str:
        return stream_url(https_base_of(self.node.url), self.session_id, self.stream.value,
                          self.direction.value)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    same_node_window: float = 30.0
    """How long to keep reconnecting to the same node after a loss (seconds)."""
    backoff_initial: float = 0.25
    backoff_max: float = 4.0
    connect_timeout: float = 10.0
    refresh_margin: float = 10.0
    """Ask for a fresh grant when the token's connect window ends within this long."""
    refresh_timeout: float = 10.0
    """How long to wait for the master's answer to ``refresh_grant`` before trying the
    token held anyway (the control connection may be reconnecting)."""


# --- what a runner reports -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamUp:
    stream: StreamKind
    direction: StreamDirection
    node: NodeRef
    reconnected: bool


@dataclass(frozen=True, slots=True)
class StreamDown:
    """The connection dropped or could not be made; the runner retries the same node
    (``retrying``). ``lost``: it broke without an end (close code 1006, a reset) or the
    node could not be reached — the node or the network failed — rather than being
    ended or refused by the node with a reason (``code``: the close code, if any)."""

    stream: StreamKind
    direction: StreamDirection
    node: NodeRef
    reason: str
    retrying: bool = True
    lost: bool = True
    code: int | None = None


@dataclass(frozen=True, slots=True)
class GrantRefreshed:
    """The master renewed the grant (a fresh token) before a reconnect."""

    stream: StreamKind
    direction: StreamDirection
    node: NodeRef


@dataclass(frozen=True, slots=True)
class StreamLost:
    """The same node stayed unreachable for the whole retry window; the runner stopped."""

    stream: StreamKind
    direction: StreamDirection
    node: NodeRef
    reason: str


@dataclass(frozen=True, slots=True)
class StreamFinished:
    """The stream ended normally (the publisher left, or we stopped)."""

    stream: StreamKind
    direction: StreamDirection
    node: NodeRef
    reason: str


@dataclass(frozen=True, slots=True)
class FrameSent:
    stream: StreamKind
    seq: int
    counter: int
    key: bool
    size: int


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """One frame a viewer got, decoded into a picture when the viewer decodes."""

    stream: StreamKind
    node: NodeRef
    seq: int
    key: bool
    size: int
    timestamp_us: int
    received_us: int
    counter: int | None
    picture: DecodedFrame | None


StreamEvent = (StreamUp | StreamDown | StreamLost | StreamFinished | GrantRefreshed | FrameSent
               | FrameReceived)
EventCallback = Callable[[StreamEvent], Awaitable[None]]
GrantRefresher = Callable[[StreamTarget], Awaitable[bool]]
"""Asks the master for a fresh grant of a target (sends ``refresh_grant``); ``False`` if
it could not be asked (no control connection). The answer comes back through
:meth:`StreamRunner.replace_target` or :meth:`StreamRunner.grant_refused`."""


def _closed_down(target: StreamTarget, exc: StreamClosed, ended: str) -> StreamDown:
    """How a connection that closed is reported: lost (1006) or ended with a reason."""
    name = target.node.name
    if exc.code == ABNORMAL_CLOSURE:
        return StreamDown(target.stream, target.direction, target.node,
                          f"connection to {name} lost ({exc.code}: {exc.reason})",
                          lost=True, code=exc.code)
    return StreamDown(target.stream, target.direction, target.node,
                      f"{name} {ended} ({exc.code}: {exc.reason})", lost=False,
                      code=exc.code)


def _says_expired(exc: StreamRefused) -> bool:
    """The node refused the token because its connect window is over."""
    return exc.status == 401 and (exc.error == "TokenExpired"
                                  or "expired" in exc.message.lower())


# --- the common part: connect to one node, retrying within the window ----------------


class StreamRunner:
    """Keeps one stream connection to one node up; see the module docstring."""

    def __init__(self, target: StreamTarget, *, network: NetworkSettings,
                 on_event: EventCallback, policy: RetryPolicy | None = None,
                 transport: Transport = "atlas-stream", rng: random.Random | None = None,
                 refresh: GrantRefresher | None = None) -> None:
        self.target = target
        self.network = network
        self.on_event = on_event
        self.policy = policy or RetryPolicy()
        self.transport: Transport = transport
        self.refresh = refresh
        self._rng = rng or random.Random()
        self._new_target = asyncio.Event()
        self._refusal: str | None = None
        self._stopping = False

    def replace_target(self, target: StreamTarget) -> None:
        """A fresh grant (a new token, maybe another node) for the next connection."""
        self.target = target
        self._new_target.set()

    def grant_refused(self, reason: str) -> None:
        """The master refused to renew the grant (``refresh_grant``): the runner stops
        at its next connection attempt and reports :class:`StreamLost`."""
        self._refusal = reason
        self._new_target.set()

    def stop(self) -> None:
        self._stopping = True
        self._new_target.set()  # wakes a retry wait

    def _needs_refresh(self, target: StreamTarget) -> bool:
        return self.refresh is not None and target.expires_within(self.policy.refresh_margin)

    async def _fresh_target(self, stale: StreamTarget) -> StreamTarget:
        """Ask the master for a fresh grant of ``stale`` and wait for it (at most
        :attr:`RetryPolicy.refresh_timeout`); the target held if no answer came."""
        assert self.refresh is not None
        self._new_target.clear()
        if not await self.refresh(stale):
            return self.target
        try:
            async with asyncio.timeout(self.policy.refresh_timeout):
                while (self.target is stale and self._refusal is None
                       and not self._stopping):
                    await self._new_target.wait()
                    self._new_target.clear()
        except TimeoutError:
            log.info("%s %s: no fresh grant from the master within %g s; trying the token "
                     "held", stale.stream, stale.direction, self.policy.refresh_timeout)
        if self._stopping:
            raise _Stopped
        if self._refusal is not None:
            raise _GrantRefused(self._refusal)
        fresh = self.target
        if fresh is not stale:
            await self.on_event(GrantRefreshed(fresh.stream, fresh.direction, fresh.node))
        return fresh

    async def _connect_with_retry(self, first: bool, reason: str) -> StreamPublisher | \
            StreamSubscriber:
        """Connect (again) to the target's node, retrying within the window; with a
        fresh grant first when the token held no longer opens connections."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.same_node_window
        delay = self.policy.backoff_initial
        last = reason
        expired = False  # the node said so of the token held
        while True:
            if self._stopping:
                raise _Stopped
            if self._refusal is not None:
                raise _GrantRefused(self._refusal)
            target = self.target
            refreshed = False
            if self.refresh is not None and (expired or self._needs_refresh(target)):
                target = await self._fresh_target(target)
                refreshed = True
            expired = refused = False
            self._new_target.clear()
            try:
                endpoint = await self._open(target)
            except StreamRefused as exc:
                refused = True
                if exc.status in (403, 409):  # not ours to publish or view: no retry helps
                    raise SessionFailed(
                        "stream_refused", f"{target.node.name} refused the {target.stream} "
                        f"{target.direction} connection: {exc}") from None
                last = f"{target.node.name} refused: {exc.message}"
                expired = _says_expired(exc)
                if expired and not refreshed and self.refresh is not None:
                    continue  # ask for a fresh grant at once, no backoff
            except (OSError, TimeoutError, ConnectionError) as exc:
                last = str(connect_failure(exc, target.node.name))
            else:
                if self._stopping:
                    endpoint.abort()
                    raise _Stopped
                await self.on_event(StreamUp(target.stream, target.direction, target.node,
                                             reconnected=not first))
                return endpoint
            left = deadline - loop.time()
            if left <= 0:
                raise _WindowPassed(last)
            log.info("%s %s on %s: %s; retrying", target.stream, target.direction,
                     target.node.name, last)
            await self.on_event(StreamDown(target.stream, target.direction, target.node, last,
                                           lost=not refused))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, delay * (0.5 + self._rng.random()))):
                    await self._new_target.wait()
            delay = min(self.policy.backoff_max, delay * 2)

    async def _connect_or_end(self, first: bool, reason: str
                              ) -> StreamPublisher | StreamSubscriber | None:
        """:meth:`_connect_with_retry`, or ``None`` when the runner is done: stopped, or
        the node lost for the window or the grant not renewed (reported)."""
        try:
            return await self._connect_with_retry(first, reason)
        except _WindowPassed as exc:
            await self._lost(str(exc))
        except _GrantRefused as exc:
            await self._lost(f"the master did not renew the grant: {exc}")
        except _Stopped:
            pass
        return None

    def _broken(self, exc: BaseException) -> StreamDown:
        """How an open connection that failed on the network is reported."""
        t = self.target
        return StreamDown(t.stream, t.direction, t.node,
                          f"connection to {t.node.name} lost: {exc}")

    async def _open(self, target: StreamTarget) -> StreamPublisher | StreamSubscriber:
        raise NotImplementedError

    async def _lost(self, reason: str) -> None:
        t = self.target
        await self.on_event(StreamLost(t.stream, t.direction, t.node, reason))


class _WindowPassed(Exception):
    pass


class _GrantRefused(Exception):
    pass


class _Stopped(Exception):
    pass


# --- publishing a screen ------------------------------------------------------------


class ScreenPublisher(StreamRunner):
    """Captures ``source`` at ``fps`` and publishes it to the target (the home node).

    Without ``source``, ``source_factory`` opens it when the first picture is captured
    (a publisher on standby never opens the screen). ``sending=False`` starts on standby
    (see the module docstring)."""

    def __init__(self, target: StreamTarget, source: ScreenSource | None = None, *,
                 network: NetworkSettings, on_event: EventCallback,
                 source_factory: Callable[[], ScreenSource] | None = None,
                 encoder: ScreenEncoder | None = None, fps: float = DEFAULT_FPS,
                 policy: RetryPolicy | None = None, transport: Transport = "atlas-stream",
                 counter_start: int = 0, report_frames: bool = False,
                 sending: bool = True, refresh: GrantRefresher | None = None) -> None:
        super().__init__(target, network=network, on_event=on_event, policy=policy,
                         transport=transport, refresh=refresh)
        if not 0 < fps <= MAX_FPS:
            raise ValueError(f"fps must be above 0 and at most {MAX_FPS:g}")
        if source is None and source_factory is None:
            raise ValueError("a publisher needs a source or a source_factory")
        self._source = source
        self._source_factory = source_factory
        self.encoder = encoder or ScreenEncoder()
        self.fps = fps
        self.counter = counter_start
        self.frames_sent = 0
        self.bytes_sent = 0
        self.report_frames = report_frames
        self._sending = sending
        self._resume = asyncio.Event()  # set: sending again, or stopping

    @property
    def source(self) -> ScreenSource:
        if self._source is None:
            assert self._source_factory is not None
            self._source = self._source_factory()
        return self._source

    @property
    def sending(self) -> bool:
        return self._sending

    def start_sending(self) -> None:
        """Capture and send again (from a fresh key frame), on the same connection."""
        self._sending = True
        self._resume.set()

    def pause_sending(self) -> None:
        """Back to standby: stop sending, keep the connection."""
        self._sending = False
        self._resume.clear()

    def stop(self) -> None:
        super().stop()
        self._resume.set()

    async def _standby(self, endpoint: StreamPublisher) -> None:
        """Hold the connection without sending until told to send or stop; raises
        :class:`StreamClosed` if the node ends it meanwhile."""
        closed = asyncio.ensure_future(endpoint.wait_closed())
        resumed = asyncio.ensure_future(self._resume.wait())
        try:
            await asyncio.wait({closed, resumed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (closed, resumed):
                f.cancel()
            await asyncio.gather(closed, resumed, return_exceptions=True)
        if closed.done() and not closed.cancelled() and closed.exception() is None:
            raise closed.result()

    async def _open(self, target: StreamTarget) -> StreamPublisher:
        return await publish(target.url, target.token, ssl=self.network.ssl_context(),
                             transport=self.transport, resolver=self.network.resolver(),
                             local_address=self.network.source_address,
                             timeout=self.policy.connect_timeout)

    def _capture(self, source: ScreenSource, counter: int) -> EncodedFrame:
        captured_at = time.time()
        picture = source.grab(counter, captured_at)
        return self.encoder.encode(picture, counter, int(captured_at * 1_000_000))

    async def run(self, max_frames: int | None = None) -> None:
        """Publish until stopped, cancelled, ``max_frames`` sent, or the node is lost."""
        first, reason = True, ""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            endpoint = await self._connect_or_end(first, reason)
            if endpoint is None:
                return
            assert isinstance(endpoint, StreamPublisher)
            first = False
            self.encoder.request_key_frame()  # viewers need a key frame from this encoder
            next_tick = loop.time()
            try:
                while not self._stopping:
                    if not self._sending:
                        await self._standby(endpoint)
                        self.encoder.request_key_frame()  # the viewers start afresh
                        next_tick = loop.time()
                        continue
                    if max_frames is not None and self.frames_sent >= max_frames:
                        await endpoint.end("done")
                        await self._finished("sent every frame asked for")
                        return
                    delay = next_tick - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_tick = max(next_tick + 1 / self.fps, loop.time())
                    source = self.source  # opened here, on the loop, at the first picture
                    self.counter += 1
                    frame = await asyncio.to_thread(self._capture, source, self.counter)
                    kind = FrameType.KEY if frame.key else FrameType.DELTA
                    endpoint.seq += 1
                    wire = Frame(kind, endpoint.seq, frame.captured_us, frame.payload)
                    await endpoint.send(wire)
                    self.frames_sent += 1
                    self.bytes_sent += wire.size
                    if self.report_frames:
                        await self.on_event(FrameSent(self.target.stream, endpoint.seq,
                                                      frame.counter, frame.key, wire.size))
                await endpoint.end("stopped")
                await self._finished("stopped")
                return
            except StreamClosed as exc:
                if exc.code == CloseCode.REPLACED:
                    await self._finished("replaced by a newer connection of ours")
                    return
                down = _closed_down(self.target, exc, "closed the stream")
            except (OSError, ConnectionError) as exc:
                down = self._broken(exc)
            endpoint.abort()
            reason = down.reason
            await self.on_event(down)

    async def _finished(self, reason: str) -> None:
        t = self.target
        await self.on_event(StreamFinished(t.stream, t.direction, t.node, reason))


# --- viewing a stream ----------------------------------------------------------------


class StreamViewer(StreamRunner):
    """Subscribes to the target (the publisher's home node) and reports every frame;
    with ``decode`` the pictures are rebuilt (key + deltas) for saving or showing.

    It watches until stopped: when the stream ends it subscribes again to the same node
    (and waits there for the publisher), since only the master decides that a session
    is over. How it ended is reported all the same: a connection that broke without an
    end frame (the node died: 1006) is a loss, an end with a reason is not."""

    def __init__(self, target: StreamTarget, *, network: NetworkSettings,
                 on_event: EventCallback, decode: bool = False,
                 policy: RetryPolicy | None = None,
                 transport: Transport = "atlas-stream",
                 refresh: GrantRefresher | None = None) -> None:
        super().__init__(target, network=network, on_event=on_event, policy=policy,
                         transport=transport, refresh=refresh)
        self.decode = decode
        self.decoder = ScreenDecoder()
        self.stats = FrameStats()
        self.undecodable = 0
        self._endpoint: StreamSubscriber | None = None

    async def _open(self, target: StreamTarget) -> StreamSubscriber:
        return await subscribe(target.url, target.token, ssl=self.network.ssl_context(),
                               transport=self.transport, resolver=self.network.resolver(),
                               local_address=self.network.source_address,
                               timeout=self.policy.connect_timeout)

    def stop(self) -> None:
        super().stop()
        if self._endpoint is not None:
            self._endpoint.abort()

    def _decode(self, frame: Frame) -> DecodedFrame | None:
        try:
            return self.decoder.decode(frame.type is FrameType.KEY, frame.payload)
        except NeedKeyFrame:
            return None
        except CodecError as exc:
            log.warning("frame %d of %s cannot be decoded: %s", frame.seq,
                        self.target.stream, exc)
            self.decoder.reset()
            return None

    async def run(self) -> None:
        """View until the stream ends, we stop, or the node is lost for the window."""
        first, reason = True, ""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            endpoint = await self._connect_or_end(first, reason)
            if endpoint is None:
                return
            assert isinstance(endpoint, StreamSubscriber)
            self._endpoint = endpoint
            first = False
            self.decoder.reset()
            try:
                while True:
                    frame = await endpoint.receive()
                    received = now_us()
                    picture = None
                    if self.decode:
                        picture = await asyncio.to_thread(self._decode, frame)
                        if picture is None:
                            self.undecodable += 1
                    counter = picture.counter if picture is not None else None
                    self.stats.record(seq=frame.seq, key=frame.type is FrameType.KEY,
                                      size=frame.size, timestamp_us=frame.timestamp_us,
                                      now_us=received, now=loop.time(), counter=counter)
                    t = self.target
                    await self.on_event(FrameReceived(
                        t.stream, t.node, frame.seq, frame.type is FrameType.KEY,
                        frame.size, frame.timestamp_us, received, counter, picture))
            except StreamClosed as exc:
                if self._stopping:
                    return
                # Even a normal end is not the end of the session: the publisher may be
                # reconnecting (its node restarted) or the session ending (the master
                # says so and stops us). Keep watching the same node meanwhile.
                down = _closed_down(self.target, exc, "ended the stream")
            except (OSError, ConnectionError) as exc:
                down = self._broken(exc)
            finally:
                self._endpoint = None
            endpoint.abort()
            reason = down.reason
            await self.on_event(down)
