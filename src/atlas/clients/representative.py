"""The representative console (``atlas rep``): log in, take sessions, watch the screen.

Guide, "Run Test Connections": the representative console connects to the master, to
its own home traffic node, and "to the home traffic node of the remote client involved
in the session" to receive the customer's screen; with Show My Screen it publishes its
own screen on its home node for the customer to watch.

* ``welcome`` + ``queue`` — the sessions waiting in the queues this representative sees
  (``general``, its personal ``rep:<id>``); ``--accept-next`` takes the oldest without
  asking, otherwise a person is asked on the terminal; ``--queue`` limits both to one
  queue (``personal``, ``general`` or a queue id);
* ``session_started`` — view ``screen:customer`` on the customer's home node; every
  frame is measured (:mod:`atlas.clients.stats`) and, with ``--save-frames``, written as
  a JPEG whose comment carries the publisher's frame counter; and connect the publisher
  of ``screen:representative`` to our own home node, on standby (it sends nothing);
* ``--show-my-screen`` turns Show My Screen on once the session runs (and
  ``--show-my-screen-seconds`` off again): the master grants the customer a view of our
  stream on our home node (and revokes it at off), and our standby publisher starts (and
  stops) sending frames on the connection it holds until the session ends;
* ``--generate-key`` asks the master for a session key (``generate_session_key``, for our
  personal queue) and prints it; with ``--accept-next`` or at the terminal the console then
  waits for that customer, otherwise it exits once the key is printed;
* ``session_ended`` with ``restart`` (a traffic node went offline): the master queued
  the session again in our personal queue; the console accepts it again, waiting as
  long as the master says ("retry in N s") while the old home node may come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar, Final

from atlas.clients.control import ControlClient, ControlEvent
from atlas.clients.errors import SiteRefused
from atlas.clients.report import Reporter
from atlas.clients.screen import ScreenSource
from atlas.clients.screen_codec import encode_image, frame_comment
from atlas.clients.session import ClientApp, ClientSettings, Timer, node_dict
from atlas.clients.streams import FrameReceived
from atlas.protocol.control import (
    AcceptNext,
    ClientKind,
    Error,
    ErrorCode,
    GenerateSessionKey,
    Queue,
    QueueEntry,
    SessionAccepted,
    SessionEnded,
    SessionKeyIssued,
    SessionStarted,
    ShowMyScreen,
    StreamKind,
)

Prompt = Callable[[str], Awaitable[bool]]
SAVE_QUALITY = 90
DEFAULT_RETRY_SECONDS = 5


PERSONAL_QUEUE: Final = "personal"
"""``--queue personal``: the representative's own queue (``rep:<id>`` or
``rep_username:<name>``, as the session key named it)."""


class FrameSaver:
    """Writes received pictures to ``directory`` as ``frame-000001-key.jpg``, … in the
    order they arrived; each JPEG's comment is ``atlas-frame counter=N captured_us=T``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def next_path(self, key: bool) -> Path:
        self.count += 1
        return self.directory / f"frame-{self.count:06d}-{'key' if key else 'delta'}.jpg"

    @staticmethod
    def write(path: Path, frame: FrameReceived) -> None:
        assert frame.picture is not None
        data = encode_image(frame.picture.image, "jpeg", SAVE_QUALITY,
                            frame_comment(frame.picture.counter, frame.timestamp_us))
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)


async def terminal_prompt(question: str) -> bool:
    """Ask yes/no on the terminal without blocking the event loop (a daemon thread, so
    an unanswered question never keeps the process alive)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def ask() -> None:
        try:
            text = input(f"{question} [y/N] ")
        except (EOFError, OSError):
            text = ""
        def deliver() -> None:
            if not answer.done():
                answer.set_result(text)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(deliver)

    threading.Thread(target=ask, name="prompt", daemon=True).start()
    return (await answer).strip().lower() in ("y", "yes")


class RepresentativeApp(ClientApp):
    """``atlas rep``: see the module docstring."""

    kind: ClassVar[ClientKind] = ClientKind.REPRESENTATIVE

    def __init__(self, control: ControlClient, settings: ClientSettings, reporter: Reporter,
                 *, accept_next: bool = False, prompt: Prompt | None = None,
                 save_frames: Path | None = None, show_my_screen: bool = False,
                 show_my_screen_seconds: float | None = None, stay: bool = False,
                 list_queue: bool = False, generate_key: bool = False,
                 key_ttl: int | None = None, accept_queue: str | None = None,
                 source_factory: Callable[[], ScreenSource] | None = None) -> None:
        super().__init__(control, settings, reporter, source_factory=source_factory)
        self.accept_next = accept_next
        self.accept_queue = accept_queue  # None: any; "personal"; else a queue id
        self.prompt = prompt
        self.saver = FrameSaver(save_frames) if save_frames is not None else None
        self.show_my_screen = show_my_screen
        self.show_my_screen_seconds = show_my_screen_seconds
        self.stay = stay
        self.list_queue = list_queue
        self.generate_key = generate_key
        self.key_ttl = key_ttl
        self.key_pending = False
        self.decode_frames = True
        self.queue: Queue | None = None
        self.accept_pending = False
        self.asking = False
        self.asked: QueueEntry | None = None
        self.customer_hostname: str | None = None
        self.restart_customer: str | None = None
        self.frames_received = 0

    # the queue ---------------------------------------------------------------------------

    async def on_ready(self) -> None:
        if self.generate_key:
            self.key_pending = await self.send(GenerateSessionKey(ttl=self.key_ttl))
            if not self.key_pending:
                self.finish("could not ask for a session key", 1)

    async def on_message(self, message: ControlEvent) -> None:
        match message:
            case Queue():
                self.queue = message
                self.emit("queue", total=message.total,
                          entries=[_entry(e) for e in message.entries])
                if self.list_queue:
                    if not self.key_pending:
                        self.finish("queue listed")
                    return
                await self.maybe_accept()
            case SessionKeyIssued():
                self.key_pending = False
                expires_at = dt.datetime.fromtimestamp(message.expires, dt.UTC)
                self.emit("session_key", short_key=message.short_key, key_url=message.key_url,
                          expires=message.expires,
                          expires_at=expires_at.isoformat().replace("+00:00", "Z"),
                          queue_id=message.queue_id)
                if self.list_queue or not (self.accept_next or self.prompt):
                    self.finish("session key generated")
            case SessionAccepted():
                self.accept_pending = False
                self.customer_hostname = message.customer_hostname
                self.emit("accepted", session_id=message.session_id,
                          representative=message.representative,
                          customer=message.customer_hostname)

    def _restart_entry(self) -> QueueEntry | None:
        if self.queue is None or self.restart_customer is None:
            return None
        return next((e for e in self.queue.entries if e.queue_id.startswith("rep:")
                     and e.customer_hostname == self.restart_customer), None)

    def acceptable(self) -> list[QueueEntry]:
        """The waiting sessions this console may take (``--queue``), oldest first."""
        if self.queue is None:
            return []
        if self.accept_queue is None:
            return list(self.queue.entries)
        if self.accept_queue == PERSONAL_QUEUE:
            return [e for e in self.queue.entries
                    if e.queue_id.startswith(("rep:", "rep_username:"))]
        return [e for e in self.queue.entries if e.queue_id == self.accept_queue]

    async def maybe_accept(self) -> None:
        """Take the next session if we are free and may (restart first)."""
        waiting = self.acceptable()
        if (self.session is not None or self.accept_pending or self.asking
                or self.queue is None or not self.queue.entries):
            return
        restart = self._restart_entry()
        if restart is not None:
            self.accept_pending = True
            await self.send(AcceptNext(queue_id=restart.queue_id))
            return
        if self.restart_customer is not None and not self.accept_next and not self.prompt:
            return
        if not waiting:
            return
        if self.accept_next:
            self.accept_pending = True
            await self.send(AcceptNext(
                queue_id=waiting[0].queue_id if self.accept_queue is not None else None))
            return
        if self.prompt is not None:
            self.asking = True
            self.asked = waiting[0]
            self.spawn(self._ask(waiting[0]), "prompt")

    async def _ask(self, entry: QueueEntry) -> None:
        assert self.prompt is not None
        yes = await self.prompt(
            f"Accept the session from {entry.customer_hostname} ({entry.platform}, "
            f"queue {entry.queue_id})?")
        await self.post(Timer("answer", yes))

    async def on_error(self, error: Error) -> None:
        if self.key_pending:  # asked first, so the first answer is the key's
            self.key_pending = False
            self.fail(SiteRefused(error, "generating a session key"))
            return
        if not self.accept_pending:
            return
        self.accept_pending = False
        if error.code is ErrorCode.NO_TRAFFIC_NODE:
            delay = error.retry_after_seconds or DEFAULT_RETRY_SECONDS
            self.call_later(delay, "accept")

    async def on_timer(self, timer: Timer) -> None:
        if timer.name == "accept":
            await self.maybe_accept()
        elif timer.name == "answer":
            self.asking = False
            asked, self.asked = self.asked, None
            if timer.data and self.session is None and not self.accept_pending:
                self.accept_pending = True  # the oldest of the queue asked about
                await self.send(AcceptNext(queue_id=asked.queue_id if asked else None))
        elif timer.name == "show_my_screen_off" and self.session is not None:
            if self.session.session_id == timer.data:
                await self.set_show_my_screen(False)

    # the session --------------------------------------------------------------------------

    def sends_at_once(self, stream: StreamKind) -> bool:
        # our screen waits, connected, for Show My Screen
        return stream is not StreamKind.REPRESENTATIVE_SCREEN

    async def set_show_my_screen(self, on: bool) -> None:
        """Turn Show My Screen on or off: tell the master (it grants or revokes the
        customer's view) and start or pause our standby publisher."""
        session = self.session
        if session is None:
            return
        if not await self.send(ShowMyScreen(session_id=session.session_id, on=on)):
            return
        if not session.set_sending(StreamKind.REPRESENTATIVE_SCREEN, on):
            return  # no publish grant in this session: nothing to show it with
        fields: dict[str, object] = {}
        if on:
            runner = session.runners[StreamKind.REPRESENTATIVE_SCREEN]
            fields["node"] = node_dict(runner.target.node)
        self.emit("show_my_screen", session_id=session.session_id, on=on, **fields)

    async def on_started(self, started: SessionStarted) -> None:
        self.restart_customer = None
        await super().on_started(started)
        if self.show_my_screen:
            await self.set_show_my_screen(True)
            if self.show_my_screen_seconds is not None:
                self.call_later(self.show_my_screen_seconds, "show_my_screen_off",
                                started.session_id)

    async def on_frame(self, frame: FrameReceived) -> None:
        self.frames_received += 1
        path = None
        if self.saver is not None and frame.picture is not None:
            path = self.saver.next_path(frame.key)
            await asyncio.to_thread(FrameSaver.write, path, frame)
        self.report_frame(frame, str(path) if path is not None else None)
        limit = self.settings.frames
        if limit is not None and self.frames_received >= limit:
            self.finish(f"--frames {limit} received")

    async def on_ended(self, ended: SessionEnded) -> None:
        await super().on_ended(ended)
        if ended.restart:
            self.restart_customer = self.customer_hostname
            self.emit("restart", session_id=ended.session_id,
                      detail=f"traffic node {ended.node_name or '?'} went offline; accepting "
                      "the restarted session from the personal queue")
            await self.maybe_accept()
            return
        if self.stay:
            await self.maybe_accept()
            return
        self.finish(f"session ended: {ended.message}")


def _entry(e: QueueEntry) -> dict[str, object]:
    return {"session_id": e.session_id, "queue_id": e.queue_id,
            "customer_hostname": e.customer_hostname, "platform": e.platform,
            "queued_at": e.queued_at.isoformat()}


def stdin_is_interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()
