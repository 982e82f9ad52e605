"""``atlas customer`` and ``atlas rep``: the customer client and the representative console.

Both hold a control connection to the site (the primary master) and, in a session, the
stream connections to traffic nodes the master names (DESIGN.md §2). For the cluster
test (guide, "Perform a … Cluster Test") a test client is routed to a chosen node by its
local host settings: ``--source-address`` (the source network the master's prefix rules
and the demo's geo-DNS see) and ``--tz-offset`` (the UTC offset it reports for the
``timezone`` method).

Scripts: ``--json`` writes one JSON object per line (``atlas.clients.report``);
``--duration``/``--frames`` stop the client. Every failure is one line on standard error
and an exit code (``atlas.clients.errors``): 2 usage, 3 refused key or password,
5 unreachable or untrusted certificate, 6 try again later, 1 anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from atlas.broker.session_keys import MAX_TTL_SECONDS, MIN_TTL_SECONDS
from atlas.cli.prompts import NoPassword, login_password
from atlas.clients.control import ControlClient, ControlOptions
from atlas.clients.customer import CustomerApp
from atlas.clients.errors import EXIT_USAGE, ClientFailure
from atlas.clients.host import HostFacts, check_source_address, parse_tz_offset
from atlas.clients.network import NetworkSettings, SiteAddress
from atlas.clients.report import JsonReporter, Reporter, TextReporter
from atlas.clients.representative import RepresentativeApp, stdin_is_interactive, terminal_prompt
from atlas.clients.screen import (
    DEFAULT_SIZE,
    ScreenSource,
    ScreenUnavailable,
    open_source,
    parse_size,
)
from atlas.clients.screen_codec import DEFAULT_KEY_INTERVAL, DEFAULT_QUALITY
from atlas.clients.session import ClientApp, ClientSettings, ScreenSettings
from atlas.clients.streams import DEFAULT_FPS, MAX_FPS, RetryPolicy
from atlas.net.resolver import ENV_VAR as DNS_ENV
from atlas.net.resolver import DnsServer
from atlas.protocol.control import AuthCustomer, AuthRep, ClientKind

QUEUE_PATTERN = re.compile(
    r"personal|general|rep:\d{1,18}|rep_username:[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
ENV_SITE = "ATLAS_SITE"
ENV_CA_FILE = "ATLAS_CA_FILE"
ENV_PASSWORD = "ATLAS_PASSWORD"  # noqa: S105 - the variable's name
ENV_SESSION_KEY = "ATLAS_SESSION_KEY"
DEFAULT_RETRY_WINDOW = RetryPolicy().same_node_window


class Source(StrEnum):
    TEST_PATTERN = "test-pattern"
    DESKTOP = "desktop"


class Format(StrEnum):
    JPEG = "jpeg"
    WEBP = "webp"


class StreamTransport(StrEnum):
    ATLAS_STREAM = "atlas-stream"
    WEBSOCKET = "websocket"


SiteOpt = Annotated[str | None, typer.Option(
    "--site", envvar=ENV_SITE, show_envvar=True,
    help="The support site: https://host[:port] (routes to the primary master)")]
CaFileOpt = Annotated[Path | None, typer.Option(
    "--ca-file", envvar=ENV_CA_FILE, show_envvar=True,
    help="CA certificate to trust for the site and its nodes (else the system's)")]
DnsOpt = Annotated[str | None, typer.Option(
    "--dns", envvar=DNS_ENV, show_envvar=True,
    help="DNS server ip[:port] for every lookup (else the system resolver)")]
SourceAddressOpt = Annotated[str | None, typer.Option(
    "--source-address",
    help="Local IP address to connect from (the cluster test routes a client by its "
         "source network this way)")]
TzOffsetOpt = Annotated[str | None, typer.Option(
    "--tz-offset",
    help="UTC offset to report instead of this machine's: ±HH:MM, or a zone like "
         "Asia/Tokyo (the timezone method routes by it)")]
HostnameOpt = Annotated[str | None, typer.Option(
    "--hostname", help="Hostname to report (default: this machine's)")]
DurationOpt = Annotated[float | None, typer.Option(
    "--duration", min=0.0, help="Stop after this many seconds")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="One JSON object per line on stdout: connected, queued, started, "
                   "frame, stats, ended, failed, done")]
ScreenOpt = Annotated[Source, typer.Option(
    "--source", help="What to share: a generated test pattern, or the real desktop (mss)")]
SizeOpt = Annotated[str, typer.Option(
    "--size", help="Test pattern size, and the largest the desktop is scaled to")]
FpsOpt = Annotated[float, typer.Option(
    "--fps", min=0.1, max=MAX_FPS, help="Frames per second to share")]
FormatOpt = Annotated[Format, typer.Option("--format", help="Picture encoding")]
QualityOpt = Annotated[int, typer.Option("--quality", min=1, max=100, help="Picture quality")]
KeyIntervalOpt = Annotated[int, typer.Option(
    "--key-interval", min=1, help="A key frame every N frames (deltas between)")]
TransportOpt = Annotated[StreamTransport, typer.Option(
    "--transport", help="Stream connections: the raw atlas-stream/1 data plane or WebSocket")]
ChatOpt = Annotated[str | None, typer.Option(
    "--chat", help="A chat line to send once the session starts")]
RetryWindowOpt = Annotated[float, typer.Option(
    "--retry-window", min=0.0,
    help="After a stream connection drops, how long to keep reconnecting to the same "
         "traffic node (seconds)")]
ReportFramesOpt = Annotated[bool | None, typer.Option(
    "--report-frames/--no-report-frames",
    help="Report every frame (default: with --json)")]


@dataclass(frozen=True)
class Common:
    """The options both clients share, checked."""

    site: SiteAddress
    network: NetworkSettings
    host: HostFacts
    settings: ClientSettings
    json: bool


def _usage(message: str) -> typer.Exit:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    return typer.Exit(EXIT_USAGE)


def _common(*, site: str | None, ca_file: Path | None, dns: str | None,
            source_address: str | None, tz_offset: str | None, hostname: str | None,
            duration: float | None, frames: int | None, json: bool, source: Source,
            size: str, fps: float, fmt: Format, quality: int, key_interval: int,
            transport: StreamTransport, chat: str | None, retry_window: float,
            report_frames: bool | None) -> Common:
    if not site:
        raise _usage(f"--site is required (the support site URL, or set ${ENV_SITE})")
    try:
        site_address = SiteAddress.parse(site)
        server = DnsServer.parse(dns) if dns else None
        source_ip = check_source_address(source_address) if source_address else None
        offset = parse_tz_offset(tz_offset) if tz_offset is not None else None
        screen_size = parse_size(size)
        host = HostFacts.local(tz_offset_minutes=offset, hostname=hostname)
    except ValueError as exc:
        raise _usage(str(exc)) from None
    if ca_file is not None and not ca_file.is_file():
        raise _usage(f"--ca-file {ca_file}: no such file")
    if chat is not None and not chat.strip():
        raise _usage("--chat: the text is empty")
    settings = ClientSettings(
        screen=ScreenSettings(source=source.value, size=screen_size, fps=fps,
                              fmt="webp" if fmt is Format.WEBP else "jpeg",
                              quality=quality, key_interval=key_interval),
        retry=RetryPolicy(same_node_window=retry_window),
        transport="websocket" if transport is StreamTransport.WEBSOCKET else "atlas-stream",
        duration=duration, frames=frames, chat=chat,
        report_frames=json if report_frames is None else report_frames,
    )
    network = NetworkSettings(ca_file, server, source_ip)
    return Common(site_address, network, host, settings, json)


def _run(common: Common, kind: ClientKind, auth: AuthRep | AuthCustomer,
         make_app: Callable[[ControlClient, Reporter], ClientApp], reporter: Reporter,
         *, reconnect: bool) -> None:
    """Connect, run the app, exit with its code (one line on stderr on failure)."""

    async def main() -> int:
        control = ControlClient(common.site, kind=kind, auth=auth, host=common.host,
                                network=common.network,
                                options=ControlOptions(reconnect=reconnect))
        await control.start()
        app = make_app(control, reporter)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, _stopper(app, sig))
        return await app.run()

    try:
        code = asyncio.run(main())
    except ClientFailure as exc:
        if common.json:
            with contextlib.suppress(Exception):
                reporter.emit("failed", error=str(exc), code=exc.code,
                              exit_code=exc.exit_code,
                              retry_after_seconds=exc.retry_after_seconds)
        with contextlib.suppress(Exception):
            reporter.close()
        sys.stderr.write(f"error: {exc}\n")
        sys.stderr.flush()
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _stopper(app: ClientApp, sig: signal.Signals) -> Callable[[], None]:
    def stop() -> None:
        app.finish(f"stopped by {sig.name}")
        app.wake()

    return stop


def _source_factory(common: Common) -> Callable[[], ScreenSource]:
    def make() -> ScreenSource:
        return open_source(common.settings.screen.source, common.settings.screen.size)

    return make


def _check_source(common: Common) -> ScreenSource:
    """Open the screen source now, so "no display" is said before connecting."""
    try:
        return open_source(common.settings.screen.source, common.settings.screen.size)
    except ScreenUnavailable as exc:
        raise _usage(f"--source {common.settings.screen.source}: {exc}") from None


def customer(
    site: SiteOpt = None,
    key: Annotated[str | None, typer.Option(
        "--key", envvar=ENV_SESSION_KEY, show_envvar=True,
        help="The 7-digit session key the representative gave you")] = None,
    ca_file: CaFileOpt = None,
    dns: DnsOpt = None,
    source_address: SourceAddressOpt = None,
    tz_offset: TzOffsetOpt = None,
    hostname: HostnameOpt = None,
    duration: DurationOpt = None,
    frames: Annotated[int | None, typer.Option(
        "--frames", min=1, help="Stop after publishing this many frames")] = None,
    json: JsonOpt = False,
    source: ScreenOpt = Source.TEST_PATTERN,
    size: SizeOpt = f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}",
    fps: FpsOpt = DEFAULT_FPS,
    fmt: FormatOpt = Format.JPEG,
    quality: QualityOpt = DEFAULT_QUALITY,
    key_interval: KeyIntervalOpt = DEFAULT_KEY_INTERVAL,
    transport: TransportOpt = StreamTransport.ATLAS_STREAM,
    chat: ChatOpt = None,
    retry_window: RetryWindowOpt = DEFAULT_RETRY_WINDOW,
    report_frames: ReportFramesOpt = None,
) -> None:
    """Join a support session with a session key and share your screen."""
    if not key or not key.strip():
        raise _usage(f"--key is required (the 7-digit session key, or set ${ENV_SESSION_KEY})")
    if len(key.strip()) > 32:
        raise _usage("--key: a session key is 7 digits")
    common = _common(site=site, ca_file=ca_file, dns=dns, source_address=source_address,
                     tz_offset=tz_offset, hostname=hostname, duration=duration,
                     frames=frames, json=json, source=source, size=size, fps=fps,
                     fmt=fmt, quality=quality, key_interval=key_interval,
                     transport=transport, chat=chat, retry_window=retry_window,
                     report_frames=report_frames)
    opened = _check_source(common)
    reporter: Reporter = JsonReporter() if json else TextReporter()

    def make_app(control: ControlClient, rep: Reporter) -> ClientApp:
        return CustomerApp(control, common.settings, rep, source_factory=lambda: opened)

    # a session key works once: after a lost control connection the session is over
    try:
        auth = AuthCustomer(session_key=key.strip())
    except ValidationError:
        raise _usage("--key: not a session key (7 digits)") from None
    _run(common, ClientKind.SUPPORT_CUSTOMER, auth, make_app, reporter, reconnect=False)


def _password(user: str) -> str:
    try:
        return login_password(ENV_PASSWORD, f"Password for {user}: ")
    except NoPassword as exc:
        raise _usage(str(exc)) from None


def rep(
    site: SiteOpt = None,
    user: Annotated[str | None, typer.Option(
        "--user", "--username",
        help=f"Representative username (password from ${ENV_PASSWORD}, else a prompt)")] = None,
    accept_next: Annotated[bool, typer.Option(
        "--accept-next", help="Accept the next waiting session without asking")] = False,
    list_queue: Annotated[bool, typer.Option(
        "--list-queue", help="Print the queue and exit")] = False,
    queue: Annotated[str | None, typer.Option(
        "--queue", metavar="QUEUE",
        help="Accept only sessions of this queue: personal (your own), general, or a "
             "queue id such as rep:12")] = None,
    generate_key: Annotated[bool, typer.Option(
        "--generate-key", help="Generate a session key for your personal queue and print it "
                               "(with --accept-next or at the terminal, then wait for that "
                               "customer; else exit)")] = False,
    key_ttl: Annotated[int | None, typer.Option(
        "--key-ttl", min=MIN_TTL_SECONDS, max=MAX_TTL_SECONDS, metavar="SECONDS",
        help="How long the generated key stays valid (default: the site's, 24 h)")] = None,
    save_frames: Annotated[Path | None, typer.Option(
        "--save-frames", help="Write every received frame to this directory as a JPEG "
                              "(its comment carries the frame counter)")] = None,
    show_my_screen: Annotated[bool, typer.Option(
        "--show-my-screen", help="Turn Show My Screen on once the session runs")] = False,
    show_my_screen_seconds: Annotated[float | None, typer.Option(
        "--show-my-screen-seconds", min=0.0,
        help="…and off again after this many seconds")] = None,
    stay: Annotated[bool, typer.Option(
        "--stay", help="After a session ends, stay online for the next one")] = False,
    live: Annotated[bool, typer.Option(
        "--live/--no-live", help="Live view in the terminal (default: on a terminal "
                                 "without --json)")] = True,
    ca_file: CaFileOpt = None,
    dns: DnsOpt = None,
    source_address: SourceAddressOpt = None,
    tz_offset: TzOffsetOpt = None,
    hostname: HostnameOpt = None,
    duration: DurationOpt = None,
    frames: Annotated[int | None, typer.Option(
        "--frames", min=1, help="Stop after receiving this many frames")] = None,
    json: JsonOpt = False,
    source: ScreenOpt = Source.TEST_PATTERN,
    size: SizeOpt = f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}",
    fps: FpsOpt = DEFAULT_FPS,
    fmt: FormatOpt = Format.JPEG,
    quality: QualityOpt = DEFAULT_QUALITY,
    key_interval: KeyIntervalOpt = DEFAULT_KEY_INTERVAL,
    transport: TransportOpt = StreamTransport.ATLAS_STREAM,
    chat: ChatOpt = None,
    retry_window: RetryWindowOpt = DEFAULT_RETRY_WINDOW,
    report_frames: ReportFramesOpt = None,
) -> None:
    """Log in as a representative, take sessions and watch the customer's screen."""
    if not user or not user.strip():
        raise _usage("--user is required (the representative's username)")
    if show_my_screen_seconds is not None and not show_my_screen:
        raise _usage("--show-my-screen-seconds goes with --show-my-screen")
    if key_ttl is not None and not generate_key:
        raise _usage("--key-ttl goes with --generate-key")
    accept_queue = queue.strip() if queue is not None else None
    if accept_queue is not None and not QUEUE_PATTERN.fullmatch(accept_queue):
        raise _usage(f"--queue {queue!r}: expected personal, general, rep:<id> or "
                     "rep_username:<username>")
    common = _common(site=site, ca_file=ca_file, dns=dns, source_address=source_address,
                     tz_offset=tz_offset, hostname=hostname, duration=duration,
                     frames=frames, json=json, source=source, size=size, fps=fps,
                     fmt=fmt, quality=quality, key_interval=key_interval,
                     transport=transport, chat=chat, retry_window=retry_window,
                     report_frames=report_frames)
    opened = _check_source(common) if show_my_screen else None
    password = _password(user.strip())
    reporter: Reporter
    if json:
        reporter = JsonReporter()
    elif live and sys.stdout.isatty():
        from atlas.clients.live_view import LiveView

        reporter = LiveView(title=f"Atlas representative console — {user.strip()}")
    else:
        reporter = TextReporter()
    interactive = not accept_next and not list_queue and not json and stdin_is_interactive()

    def make_app(control: ControlClient, rep_reporter: Reporter) -> ClientApp:
        factory: Any = (lambda: opened) if opened is not None else _source_factory(common)
        return RepresentativeApp(
            control, common.settings, rep_reporter, accept_next=accept_next,
            prompt=terminal_prompt if interactive else None, save_frames=save_frames,
            show_my_screen=show_my_screen, show_my_screen_seconds=show_my_screen_seconds,
            stay=stay, list_queue=list_queue, generate_key=generate_key, key_ttl=key_ttl,
            accept_queue=accept_queue, source_factory=factory,
        )

    try:
        auth = AuthRep(username=user.strip(), password=password)
    except ValidationError:
        raise _usage("--user or the password: not a valid username or password") from None
    _run(common, ClientKind.REPRESENTATIVE, auth, make_app, reporter, reconnect=True)
