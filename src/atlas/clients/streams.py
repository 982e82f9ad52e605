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
(:meth:`StreamRunner.replace_target`) is used for the next attempt at once — stream
tokens only open connections for a minute.

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
    """Where and with what permission to connect one stream."""

    session_id: str
    stream: StreamKind
    direction: StreamDirection
    node: NodeRef
    token: str

    @classmethod
    def from_grant(cls, session_id: str, grant: StreamGrant) -> StreamTarget:
        return cls(session_id, grant.stream, grant.direction, grant.node, grant.token)

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


# --- what a runner reports -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamUp:
    stream: StreamKind
    direction: StreamDirection
    node: NodeRef
    reconnected: bool


@dataclass(frozen=True, slots=True)
class StreamDown:
    """The connection dropped; the runner retries the same node (``retrying``)."""

    stream: StreamKind
    direction: StreamDirection
    node: NodeRef
    reason: str
    retrying: bool = True


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


StreamEvent = StreamUp | StreamDown | StreamLost | StreamFinished | FrameSent | FrameReceived
EventCallback = Callable[[StreamEvent], Awaitable[None]]


# --- the common part: connect to one node, retrying within the window ----------------


class StreamRunner:
    """Keeps one stream connection to one node up; see the module docstring."""

    def __init__(self, target: StreamTarget, *, network: NetworkSettings,
                 on_event: EventCallback, policy: RetryPolicy | None = None,
                 transport: Transport = "atlas-stream", rng: random.Random | None = None
                 ) -> None:
        self.target = target
        self.network = network
        self.on_event = on_event
        self.policy = policy or RetryPolicy()
        self.transport: Transport = transport
        self._rng = rng or random.Random()
        self._new_target = asyncio.Event()
        self._stopping = False

    def replace_target(self, target: StreamTarget) -> None:
        """A fresh grant (a new token, maybe another node) for the next connection."""
        self.target = target
        self._new_target.set()

    def stop(self) -> None:
        self._stopping = True
        self._new_target.set()  # wakes a retry wait

    async def _connect_with_retry(self, first: bool, reason: str) -> StreamPublisher | \
            StreamSubscriber:
        """Connect (again) to the target's node, retrying within the window."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.same_node_window
        delay = self.policy.backoff_initial
        last = reason
        while True:
            if self._stopping:
                raise _Stopped
            target = self.target
            self._new_target.clear()
            try:
                endpoint = await self._open(target)
            except StreamRefused as exc:
                if exc.status in (403, 409):  # not ours to publish or view: no retry helps
                    raise SessionFailed(
                        "stream_refused", f"{target.node.name} refused the {target.stream} "
                        f"{target.direction} connection: {exc}") from None
                last = f"{target.node.name} refused: {exc.message}"
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
            await self.on_event(StreamDown(target.stream, target.direction, target.node, last))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, delay * (0.5 + self._rng.random()))):
                    await self._new_target.wait()
            delay = min(self.policy.backoff_max, delay * 2)

    async def _open(self, target: StreamTarget) -> StreamPublisher | StreamSubscriber:
        raise NotImplementedError

    async def _lost(self, reason: str) -> None:
        t = self.target
        await self.on_event(StreamLost(t.stream, t.direction, t.node, reason))


class _WindowPassed(Exception):
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
                 sending: bool = True) -> None:
        super().__init__(target, network=network, on_event=on_event, policy=policy,
                         transport=transport)
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
            try:
                endpoint = await self._connect_with_retry(first, reason)
            except _WindowPassed as exc:
                await self._lost(str(exc))
                return
            except _Stopped:
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
                reason = f"{self.target.node.name} closed the stream ({exc.code}: {exc.reason})"
            except (OSError, ConnectionError) as exc:
                reason = f"connection to {self.target.node.name} lost: {exc}"
            endpoint.abort()
            t = self.target
            await self.on_event(StreamDown(t.stream, t.direction, t.node, reason))

    async def _finished(self, reason: str) -> None:
        t = self.target
        await self.on_event(StreamFinished(t.stream, t.direction, t.node, reason))


# --- viewing a stream ----------------------------------------------------------------


class StreamViewer(StreamRunner):
    """Subscribes to the target (the publisher's home node) and reports every frame;
    with ``decode`` the pictures are rebuilt (key + deltas) for saving or showing.

    It watches until stopped: when the stream ends it subscribes again to the same node
    (and waits there for the publisher), since only the master decides that a session
    is over. The relay client reports a connection that dropped without an end frame
    as a normal close, so an end cannot tell "the publisher left" from "the node
    died" anyway."""

    def __init__(self, target: StreamTarget, *, network: NetworkSettings,
                 on_event: EventCallback, decode: bool = False,
                 policy: RetryPolicy | None = None,
                 transport: Transport = "atlas-stream") -> None:
        super().__init__(target, network=network, on_event=on_event, policy=policy,
                         transport=transport)
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
            try:
                endpoint = await self._connect_with_retry(first, reason)
            except _WindowPassed as exc:
                await self._lost(str(exc))
                return
            except _Stopped:
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
                reason = f"{self.target.node.name} ended the stream ({exc.code}: {exc.reason})"
            except (OSError, ConnectionError) as exc:
                reason = f"connection to {self.target.node.name} lost: {exc}"
            finally:
                self._endpoint = None
            endpoint.abort()
            t = self.target
            await self.on_event(StreamDown(t.stream, t.direction, t.node, reason))
