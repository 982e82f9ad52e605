"""The customer client: redeem a session key, wait, share the screen (``atlas customer``).

Guide, "Run Test Connections": the customer client connects to the master, and once the
session starts to its home traffic node, where it publishes its screen; when the
representative uses Show My Screen it also connects to the representative's home node
to watch. All of that follows the master's messages (:mod:`atlas.clients.session`):

* ``welcome`` + ``session_queued`` — waiting, with the queue position;
* ``session_accepted`` — a representative took it;
* ``session_started`` — publish the screen to the home node named in the grant;
* ``stream_grant`` / ``stream_revoked`` for ``screen:representative`` — Show My Screen;
* ``session_ended`` — done; unless ``restart`` (a traffic node went offline): the master
  queues the session again at once for the same representative, and the customer waits
  for the new ``session_started`` (same home node if it is back, else a new one).

A customer's session key works once, so the customer does not reconnect its control
connection after a loss: the master ends its session when the connection drops, and
the customer is told to ask for a new key.
"""

from __future__ import annotations

from typing import ClassVar

from atlas.clients.control import ControlEvent
from atlas.clients.errors import EXIT_RETRY_LATER, ClientFailure
from atlas.clients.session import ClientApp, ParticipantSession
from atlas.clients.streams import StreamDown, StreamFinished, StreamLost, StreamUp
from atlas.protocol.control import (
    ClientKind,
    Error,
    ErrorCode,
    SessionAccepted,
    SessionEnded,
    SessionQueued,
    StreamDirection,
)


class CustomerApp(ClientApp):
    """``atlas customer``: see the module docstring."""

    kind: ClassVar[ClientKind] = ClientKind.SUPPORT_CUSTOMER

    def prepare_session(self, session: ParticipantSession) -> None:
        if self.settings.frames is not None:
            session.publish_frames = max(0, self.settings.frames - self.frames_published())

    def frames_published(self) -> int:
        """Frames published in every session so far (restarts continue the count)."""
        return self.frame_counter

    async def on_message(self, message: ControlEvent) -> None:
        match message:
            case SessionQueued():
                self.emit("queued", session_id=message.session_id, queue_id=message.queue_id,
                          position=message.position)
            case SessionAccepted():
                self.emit("accepted", session_id=message.session_id,
                          representative=message.representative,
                          customer=message.customer_hostname)

    async def on_ended(self, ended: SessionEnded) -> None:
        await super().on_ended(ended)
        if ended.restart:
            self.emit("restart", session_id=ended.session_id,
                      detail="waiting for the representative to restart it "
                      f"(traffic node {ended.node_name or '?'} went offline)")
            return
        self.finish(f"session ended: {ended.message}")

    async def on_error(self, error: Error) -> None:
        if error.code is ErrorCode.NO_TRAFFIC_NODE:
            # the master could not give us a home node and ended the setup
            retry = error.retry_after_seconds
            self.fail(ClientFailure(
                error.code.value,
                f"no traffic node available: {error.message}"
                + (f" — try again in {retry} s" if retry else " — try again later"),
                retry_after_seconds=retry, exit_code=EXIT_RETRY_LATER))

    async def on_stream_state(self, event: StreamUp | StreamDown | StreamLost | StreamFinished
                              ) -> None:
        await super().on_stream_state(event)
        if (isinstance(event, StreamFinished) and event.direction is StreamDirection.PUBLISH
                and self.settings.frames is not None
                and self.frames_published() >= self.settings.frames):
            self.finish(f"--frames {self.settings.frames} published")
