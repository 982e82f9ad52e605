"""A participant's side of support sessions: the event loop shared by both clients.

:class:`ClientApp` runs one client: it reads the control connection's events
(:mod:`atlas.clients.control`) and its streams' events (:mod:`atlas.clients.streams`)
from **one** bounded queue, so all decisions happen in one place and in order, and it
reports what happens (:mod:`atlas.clients.report`). The customer
(:mod:`atlas.clients.customer`) and representative (:mod:`atlas.clients.representative`)
add what only they do.

:class:`ParticipantSession` is one started session as this participant takes part in it
(DESIGN.md §2): it publishes its own stream on its home node and views the streams it
was granted on their publishers' home nodes. Which connections those are comes from the
master (``session_started``, ``stream_grant``, ``stream_revoked``); this class only makes
and unmakes them, and says which nodes are in use — what the cluster test checks. A
publisher may be held on standby (connected, sending nothing): the representative's
``screen:representative`` from the session's start until Show My Screen is on.

A stream that must reconnect after its token's connect window passed (a node restarted
late in a long session) first asks the master for a fresh grant (``refresh_grant``,
:meth:`ParticipantSession.request_refresh`); the answer is a ``stream_grant`` for a
stream already held — a renewal, not a new stream — or an ``error``
(``session_not_found``, ``grant_revoked``, ``stream_not_granted``), which stops that
stream's runner and leaves the rest to the master's messages about the session.

A traffic node that goes offline mid-session (guide, "Check Connections"): the stream
runners reconnect to the same node for a bounded window; the master ends the session
with reason ``traffic_node_offline`` and ``restart``, and queues it again at once — the
representative's console accepts the restart, the customer just waits for it. The
master offers the same node while it is back within its restart window, and a new home
node after it; the clients take whichever ``session_started`` names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from atlas.clients.control import (
    Closed,
    Connected,
    ControlClient,
    ControlEvent,
    Disconnected,
    HomeNodeLanded,
    HomeNodeUnreachable,
    NotConnected,
)
from atlas.clients.errors import EXIT_OK, ClientFailure, SessionFailed
from atlas.clients.report import Reporter
from atlas.clients.screen import DEFAULT_SIZE, ScreenSource, ScreenUnavailable, open_source
from atlas.clients.screen_codec import (
    DEFAULT_KEY_INTERVAL,
    DEFAULT_QUALITY,
    ImageFormat,
    ScreenEncoder,
)
from atlas.clients.streams import (
    DEFAULT_FPS,
    FrameReceived,
    FrameSent,
    GrantRefreshed,
    RetryPolicy,
    ScreenPublisher,
    StreamDown,
    StreamEvent,
    StreamFinished,
    StreamLost,
    StreamRunner,
    StreamTarget,
    StreamUp,
    StreamViewer,
)
from atlas.protocol.control import (
    Chat,
    ChatDelivered,
    ClientKind,
    EndSession,
    Error,
    ErrorCode,
    HomeNodeDirective,
    NodeRef,
    RefreshGrant,
    SessionEnded,
    SessionStarted,
    StreamDirection,
    StreamGrant,
    StreamGranted,
    StreamKind,
    StreamRevoked,
)
from atlas.relay.client import Transport

log = logging.getLogger("atlas.clients.session")

EVENT_QUEUE: Final = 512
GOODBYE_TIMEOUT: Final = 3.0
REFRESH_REFUSALS: Final = frozenset({
    ErrorCode.SESSION_NOT_FOUND, ErrorCode.GRANT_REVOKED, ErrorCode.STREAM_NOT_GRANTED})
"""The ``error`` codes with which the master refuses ``refresh_grant``."""


@dataclass(frozen=True, slots=True)
class ScreenSettings:
    """What this participant shares, if it shares: source, size, rate, encoding."""

    source: str = "test-pattern"
    size: tuple[int, int] = DEFAULT_SIZE
    fps: float = DEFAULT_FPS
    fmt: ImageFormat = "jpeg"
    quality: int = DEFAULT_QUALITY
    key_interval: int = DEFAULT_KEY_INTERVAL


@dataclass(frozen=True, slots=True)
class ClientSettings:
    screen: ScreenSettings = field(default_factory=ScreenSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transport: Transport = "atlas-stream"
    duration: float | None = None
    """Stop after this many seconds (scripts, tests)."""
    frames: int | None = None
    """Stop after this many frames (the customer: sent; the representative: received)."""
    chat: str | None = None
    """A chat line to send once a session starts."""
    report_frames: bool = False
    """Report every frame (``frame`` events), not only the once-a-second ``stats``."""
    stats_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class Timer:
    """A delayed event the app asked for (:meth:`ClientApp.call_later`)."""

    name: str
    data: Any = None


AppEvent = ControlEvent | StreamEvent | Timer


def node_dict(node: NodeRef, role: str | None = None) -> dict[str, str]:
    d = {"name": node.name, "guid": node.guid, "url": node.url}
    if role is not None:
        d["role"] = role
    return d


class ParticipantSession:
    """This participant's streams in one started session."""

    def __init__(self, started: SessionStarted, app: ClientApp) -> None:
        self.session_id = started.session_id
        self.home_node = started.home_node
        self.app = app
        self.runners: dict[StreamKind, StreamRunner] = {}
        self.tasks: dict[StreamKind, asyncio.Task[None]] = {}
        self.publish_frames: int | None = None
        self.refreshing: list[StreamKind] = []  # refresh_grant sent, oldest first

    def nodes_in_use(self) -> list[dict[str, str]]:
        """The home node, then every node a stream of ours is connected to."""
        nodes = [node_dict(self.home_node, "home")]
        for runner in self.runners.values():
            t = runner.target
            nodes.append(node_dict(t.node, f"{t.direction.value} {t.stream.value}"))
        return nodes

    def streams(self) -> list[dict[str, str]]:
        return [{"stream": r.target.stream.value, "direction": r.target.direction.value,
                 "node": r.target.node.name, "node_guid": r.target.node.guid}
                for r in self.runners.values()]

    def holds(self, stream: StreamKind, direction: StreamDirection) -> bool:
        """Whether a runner of ours is connected (or connecting) ``direction`` ``stream``."""
        runner = self.runners.get(stream)
        task = self.tasks.get(stream)
        return (runner is not None and runner.target.direction is direction
                and task is not None and not task.done())

    async def request_refresh(self, target: StreamTarget) -> bool:
        """Ask the master for a fresh grant of ``target`` (a runner's ``refresh``)."""
        if target.session_id != self.session_id:
            return False
        sent = await self.app.send(RefreshGrant(session_id=self.session_id,
                                                stream=target.stream,
                                                direction=target.direction))
        if sent:
            self.refreshing.append(target.stream)
        return sent

    def refresh_answered(self, stream: StreamKind) -> None:
        with contextlib.suppress(ValueError):
            self.refreshing.remove(stream)

    def refresh_refused(self, error: Error) -> bool:
        """The master refused the oldest outstanding ``refresh_grant``: it answers every
        request once and in order, and the other requests that could draw these codes
        (chat, end) are only sent for the session we are in. ``False`` if none was
        outstanding."""
        if error.code not in REFRESH_REFUSALS or not self.refreshing:
            return False
        runner = self.runners.get(self.refreshing.pop(0))
        if runner is not None:
            runner.grant_refused(f"{error.code.value}: {error.message}")
        return True

    def apply_grant(self, grant: StreamGrant) -> None:
        """Connect the granted stream (a repeated grant renews the token or moves it)."""
        target = StreamTarget.from_grant(self.session_id, grant)
        runner = self.runners.get(grant.stream)
        task = self.tasks.get(grant.stream)
        self.refresh_answered(grant.stream)
        if runner is not None and task is not None and not task.done():
            runner.replace_target(target)
            return
        app = self.app
        if grant.direction is StreamDirection.PUBLISH:
            pub = ScreenPublisher(
                target, network=app.control.network, on_event=app.stream_event,
                source_factory=app.source, encoder=app.encoder(),
                fps=app.settings.screen.fps, policy=app.settings.retry,
                transport=app.settings.transport, counter_start=app.frame_counter,
                report_frames=app.settings.report_frames,
                sending=app.sends_at_once(grant.stream), refresh=self.request_refresh,
            )
            self.runners[grant.stream] = pub
            self.tasks[grant.stream] = app.spawn(pub.run(self.publish_frames),
                                                 f"publish {grant.stream}")
        else:
            viewer = StreamViewer(target, network=app.control.network,
                                  on_event=app.stream_event, decode=app.decode_frames,
                                  policy=app.settings.retry, transport=app.settings.transport,
                                  refresh=self.request_refresh)
            self.runners[grant.stream] = viewer
            self.tasks[grant.stream] = app.spawn(viewer.run(), f"view {grant.stream}")

    def set_sending(self, stream: StreamKind, on: bool) -> bool:
        """Start or pause sending on the publisher of ``stream`` (kept connected);
        ``False`` if we do not publish it."""
        runner = self.runners.get(stream)
        if not isinstance(runner, ScreenPublisher):
            return False
        if on:
            runner.start_sending()
        else:
            runner.pause_sending()
            self.app.frame_counter = max(self.app.frame_counter, runner.counter)
        return True

    async def revoke(self, stream: StreamKind) -> None:
        runner = self.runners.pop(stream, None)
        task = self.tasks.pop(stream, None)
        if runner is not None:
            runner.stop()
            if isinstance(runner, ScreenPublisher):
                self.app.frame_counter = max(self.app.frame_counter, runner.counter)
        if task is not None:
            try:
                async with asyncio.timeout(GOODBYE_TIMEOUT):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
            except Exception:  # noqa: S110 - the runner reported its own failure
                pass

    async def stop(self) -> None:
        for stream in list(self.runners):
            await self.revoke(stream)


class ClientApp:
    """One client's event loop (see the module docstring)."""

    kind: ClassVar[ClientKind]

    def __init__(self, control: ControlClient, settings: ClientSettings, reporter: Reporter,
                 *, source_factory: Callable[[], ScreenSource] | None = None) -> None:
        self.control = control
        self.settings = settings
        self.reporter = reporter
        self._source_factory = source_factory
        self._source: ScreenSource | None = None
        self._queue: asyncio.Queue[AppEvent] = asyncio.Queue(EVENT_QUEUE)
        self._tasks: set[asyncio.Task[None]] = set()
        self.session: ParticipantSession | None = None
        self.frame_counter = 0
        self.decode_frames = settings.report_frames  # the counter is in the pictures
        self._result: tuple[str, int] | None = None
        self._failure: ClientFailure | None = None

    # plumbing -------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._guard(coro), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except ClientFailure as exc:
            self.fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("task failed")
            self.fail(ClientFailure("internal_error", f"internal error: {exc!r}"))

    def wake(self) -> None:
        """Make the loop look at its state now (after :meth:`finish` from outside)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(Timer("wake"))

    async def stream_event(self, event: StreamEvent) -> None:
        """Streams report here; a full queue slows the stream (and the relay skips)."""
        await self._queue.put(event)

    async def post(self, event: AppEvent) -> None:
        """Hand an event to the loop (from a helper task)."""
        await self._queue.put(event)

    def call_later(self, delay: float, name: str, data: Any = None) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            await self._queue.put(Timer(name, data))

        self.spawn(later(), f"timer {name}")

    def source(self) -> ScreenSource:
        if self._source is None:
            factory = self._source_factory or (
                lambda: open_source(self.settings.screen.source, self.settings.screen.size))
            try:
                self._source = factory()
            except ScreenUnavailable as exc:
                raise SessionFailed("screen_unavailable", f"cannot share the screen: {exc}",
                                    exit_code=2) from None
        return self._source

    def sends_at_once(self, stream: StreamKind) -> bool:
        """Whether a publisher granted for ``stream`` sends from the start (or waits on
        standby, connected, until :meth:`ParticipantSession.set_sending`)."""
        return True

    def encoder(self) -> ScreenEncoder:
        s = self.settings.screen
        return ScreenEncoder(fmt=s.fmt, quality=s.quality, key_interval=s.key_interval)

    def emit(self, event: str, **fields: Any) -> None:
        self.reporter.emit(event, **fields)

    def finish(self, reason: str, exit_code: int = EXIT_OK) -> None:
        """Stop the loop after this event."""
        if self._result is None:
            self._result = (reason, exit_code)

    def fail(self, failure: ClientFailure) -> None:
        if self._failure is None and self._result is None:
            self._failure = failure
            self.wake()

    async def send(self, message: Any) -> bool:
        try:
            await self.control.send(message)
        except NotConnected as exc:
            self.emit("error", code=exc.code, message=str(exc), retry_after_seconds=None)
            return False
        return True

    # the loop ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until done; returns the exit code, raises :class:`ClientFailure` (the
        reporter is then left open for the caller to report it)."""
        self.spawn(self._pump(), "control events")
        self.spawn(self._stats_loop(), "stats")
        loop = asyncio.get_running_loop()
        deadline = (loop.time() + self.settings.duration
                    if self.settings.duration is not None else None)
        try:
            await self.on_ready()
            while self._result is None and self._failure is None:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    async with asyncio.timeout(timeout):
                        event = await self._queue.get()
                except TimeoutError:
                    self.finish(f"--duration {self.settings.duration:g} s reached")
                    break
                await self.handle(event)
            await self.goodbye()
        finally:
            await self.shutdown()
        if self._failure is not None:
            raise self._failure
        assert self._result is not None
        reason, code = self._result
        self.emit("done", reason=reason, exit_code=code)
        self.reporter.close()
        return code

    async def _pump(self) -> None:
        async for event in self.control.events():
            await self._queue.put(event)

    async def _stats_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            session = self.session
            if session is None:
                continue
            for runner in list(session.runners.values()):
                t = runner.target
                if isinstance(runner, StreamViewer):
                    snap = runner.stats.snapshot(loop.time())
                    if snap.frames:
                        self.emit("stats", stream=t.stream.value, direction="subscribe",
                                  node=t.node.name, undecodable=runner.undecodable,
                                  **snap.as_dict())
                elif isinstance(runner, ScreenPublisher) and runner.sending:
                    self.emit("stats", stream=t.stream.value, direction="publish",
                              node=t.node.name, frames=runner.frames_sent,
                              bytes=runner.bytes_sent, fps=runner.fps,
                              last_counter=runner.counter)

    async def goodbye(self) -> None:
        """Leave cleanly: end our session if we are the one stopping."""
        session = self.session
        if session is not None and self.control.connected and self._failure is None:
            with contextlib.suppress(ClientFailure):
                await self.control.send(EndSession(session_id=session.session_id,
                                                   reason="client stopped"))

    async def shutdown(self) -> None:
        if self.session is not None:
            await self.session.stop()
        await self.control.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._source is not None:
            self._source.close()

    # events ------------------------------------------------------------------------------

    async def on_ready(self) -> None:
        """Called once the loop runs (the control connection is up)."""

    async def handle(self, event: AppEvent) -> None:
        match event:
            case Connected():
                w = event.welcome
                self.emit("connected", client_id=w.client_id, master=event.url,
                          kind=self.kind.value, reconnected=event.reconnected,
                          utc_offset_minutes=self.control.host.utc_offset_minutes,
                          hostname=self.control.host.hostname,
                          source_address=self.control.network.source_address)
            case Disconnected():
                self.emit("disconnected", reason=event.reason, reconnecting=event.reconnecting)
                if self.session is not None:
                    await self.session.stop()
                    self.session = None
            case Closed():
                if event.failure is not None:
                    self.fail(event.failure)
                else:
                    self.finish("the control connection closed")
            case HomeNodeDirective():
                t = event.target
                target = getattr(t, "hostname", None) or getattr(t, "srv_name", None) or \
                    f"{getattr(t, 'address', '?')} ({getattr(t, 'tls_name', '?')})"
                self.emit("directive", method=t.method, target=target)
            case HomeNodeLanded():
                self.emit("home_node", guid=event.node_guid, name=event.node_name,
                          target=event.target, method=event.method, failures=event.failures)
            case HomeNodeUnreachable():
                self.emit("home_node_unreachable", method=event.method, reason=event.reason)
            case SessionStarted():
                await self.on_started(event)
            case StreamGranted():
                session = self.session
                if session is not None and session.session_id == event.session_id:
                    grant = event.grant
                    renewal = session.holds(grant.stream, grant.direction)
                    session.apply_grant(grant)
                    if grant.stream is StreamKind.REPRESENTATIVE_SCREEN and not renewal:
                        self.emit("show_my_screen", session_id=event.session_id, on=True,
                                  node=node_dict(grant.node))
            case StreamRevoked():
                if self.session is not None and self.session.session_id == event.session_id:
                    await self.session.revoke(event.stream)
                    if event.stream is StreamKind.REPRESENTATIVE_SCREEN:
                        self.emit("show_my_screen", session_id=event.session_id, on=False)
            case ChatDelivered():
                self.emit("chat", session_id=event.session_id, kind=event.sender_kind.value,
                          text=event.text, **{"from": event.sender_name})
            case SessionEnded():
                await self.on_ended(event)
            case Error():
                self.emit("error", code=event.code.value, message=event.message,
                          retry_after_seconds=event.retry_after_seconds)
                if self.session is not None and self.session.refresh_refused(event):
                    return  # the answer to a stream's refresh_grant: that runner stops
                await self.on_error(event)
            case StreamUp() | StreamDown() | StreamLost() | StreamFinished():
                await self.on_stream_state(event)
            case GrantRefreshed():
                self.emit("stream", stream=event.stream.value, direction=event.direction.value,
                          node=event.node.name, node_guid=event.node.guid,
                          state="grant renewed", reason="a fresh token from the master")
            case FrameReceived():
                await self.on_frame(event)
            case FrameSent():
                self.emit("frame", stream=event.stream.value, direction="publish",
                          seq=event.seq, counter=event.counter, key=event.key,
                          bytes=event.size)
            case Timer():
                await self.on_timer(event)
            case _:
                await self.on_message(event)

    async def on_started(self, started: SessionStarted) -> None:
        if self.session is not None:
            await self.session.stop()
        self.session = ParticipantSession(started, self)
        self.prepare_session(self.session)
        for grant in started.streams:
            self.session.apply_grant(grant)
        self.emit("started", session_id=started.session_id,
                  home_node=node_dict(started.home_node),
                  nodes_in_use=self.session.nodes_in_use(), streams=self.session.streams())
        if self.settings.chat:
            await self.send(Chat(session_id=started.session_id, text=self.settings.chat))

    def prepare_session(self, session: ParticipantSession) -> None:
        """Before the grants are applied (the customer sets its frame budget here)."""

    async def on_ended(self, ended: SessionEnded) -> None:
        if self.session is not None and self.session.session_id == ended.session_id:
            await self.session.stop()
            self.session = None
        self.emit("ended", session_id=ended.session_id, reason=ended.reason.value,
                  message=ended.message, node_name=ended.node_name, restart=ended.restart)

    async def on_error(self, error: Error) -> None:
        return None

    async def on_stream_state(self, event: StreamUp | StreamDown | StreamLost | StreamFinished
                              ) -> None:
        """Report it. A stream given up on (:class:`StreamLost`) is left to the master:
        it sees the node offline, ends the session with ``restart`` and hands out the
        node to use next (DESIGN.md §2). A connection that broke without an end (the node
        died: 1006) is reported as lost, one the node or publisher ended as closed."""
        if self.session is not None:
            runner = self.session.runners.get(event.stream)
            if isinstance(runner, ScreenPublisher):
                self.frame_counter = max(self.frame_counter, runner.counter)
        match event:
            case StreamUp():
                state = "reconnected" if event.reconnected else "connected"
                reason = ""
            case StreamDown() if event.lost:
                state, reason = "lost; retrying the same node", event.reason
            case StreamDown():
                state, reason = "closed; reconnecting to the same node", event.reason
            case StreamLost():
                state, reason = "gave up on the node; waiting for the master", event.reason
            case StreamFinished():
                state, reason = "ended", event.reason
        self.emit("stream", stream=event.stream.value, direction=event.direction.value,
                  node=event.node.name, node_guid=event.node.guid, state=state, reason=reason)

    async def on_frame(self, frame: FrameReceived) -> None:
        self.report_frame(frame)

    def report_frame(self, frame: FrameReceived, path: str | None = None) -> None:
        if self.settings.report_frames:
            latency = (frame.received_us - frame.timestamp_us) / 1000.0
            self.emit("frame", stream=frame.stream.value, direction="subscribe",
                      node=frame.node.name, seq=frame.seq, counter=frame.counter,
                      key=frame.key, bytes=frame.size, latency_ms=round(latency, 2),
                      path=path)

    async def on_timer(self, timer: Timer) -> None:
        return None

    async def on_message(self, message: ControlEvent) -> None:
        return None
