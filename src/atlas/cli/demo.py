"""``atlas demo``: a whole Atlas cluster on this machine; ``atlas demo stop`` and
``atlas demo set-method``.

The orchestration is :mod:`atlas.demo.cluster`; this module is its face: options, the
summary an operator copies from, and the live tables until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from atlas.demo.cluster import (
    DemoCluster,
    DemoOptions,
    SessionView,
    Snapshot,
    run,
    stop_demo,
)
from atlas.demo.errors import DemoError
from atlas.demo.layout import DEFAULT_DNS_PORT, DEFAULT_PORT, DEFAULT_SITE
from atlas.demo.sessions import FPS, SIZE
from atlas.demo.set_method import set_method as change
from atlas.node.logs import setup_logging

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)

LIVE_INTERVAL = 1.0
DEFAULT_DIR = Path(".atlas-demo")

DirOption = Annotated[Path, typer.Option("--dir", help="The demo's working directory "
                                         "(created, or reused when it exists)")]
RunningDirOption = Annotated[Path, typer.Option("--dir", help="The working directory of "
                                                "the running demo")]


class MethodName(StrEnum):
    """``--method``: the Method for Choosing Traffic Nodes the demo configures."""

    RANDOM = "random"
    PREFIXES = "prefixes"
    TIMEZONE = "timezone"
    SRV = "srv"
    A_RECORD = "a_record"
    ANYCAST = "anycast"
    LEAST_LOADED = "least_loaded"


app = typer.Typer(
    help="A whole Atlas cluster on this machine, until Ctrl-C.\n\n"
    "A primary and a backup master and two traffic nodes in each of two regions (US, "
    "Asia), each its own `atlas serve` process on its own 127.x.y.z address; a local CA "
    "and a wildcard certificate; a DNS server answering per client network; anycast "
    "addresses shared with SO_REUSEPORT. The cluster is configured through the REST API "
    "and synced. `atlas demo stop` stops a demo running elsewhere; `atlas demo set-method` "
    "changes its Method for Choosing Traffic Nodes.",
    invoke_without_command=True,
)


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


class ConsoleUi:
    """Progress lines, the summary, then the live table (or nothing, headless)."""

    def __init__(self, console: Console, *, headless: bool, dir_arg: Path) -> None:
        self.console = console
        self.headless = headless or not console.is_terminal
        self.dir_arg = dir_arg

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    async def running(self, demo: DemoCluster) -> None:
        snapshot = await demo.snapshot()
        self.console.print(summary(demo, snapshot, self.dir_arg), highlight=False)
        if self.headless:
            await self._headless(demo)
        else:
            await self._live(demo, snapshot)

    async def _headless(self, demo: DemoCluster) -> None:
        self.say("Running headless; stop with SIGINT/SIGTERM or "
                 f"`atlas demo stop --dir {shlex.quote(str(self.dir_arg))}`.")
        reported: set[str] = set()
        while True:
            for child in demo.exited():
                if child.name not in reported:
                    reported.add(child.name)
                    self.say(f"{child.name} exited with code {child.returncode} "
                             f"(log: {child.log_file})")
            await asyncio.sleep(LIVE_INTERVAL)

    async def _live(self, demo: DemoCluster, snapshot: Snapshot) -> None:
        with Live(live_view(demo, snapshot), console=self.console, refresh_per_second=4,
                  transient=False) as live:
            while True:
                await asyncio.sleep(LIVE_INTERVAL)
                live.update(live_view(demo, await demo.snapshot()))


def nodes_table(demo: DemoCluster, snapshot: Snapshot) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("Node", "left"), ("Role", "left"), ("Public address", "left"),
                          ("Listen", "left"), ("Region", "left"), ("Status", "left"),
                          ("Rev", "right"), ("Clients", "right"), ("Sessions", "right"),
                          ("PID", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    roles = {"primary": "primary master", "backup": "backup master", "traffic": "traffic"}
    for n in snapshot.nodes:
        style = "green" if n.ok else ("yellow" if n.status.startswith("idle") else "red")
        table.add_row(
            n.name, roles.get(n.role, n.role), n.public, n.listen_ip, n.region or "",
            Text(n.status, style=style), _num(n.revision), _num(n.clients), _num(n.sessions),
            _num(n.pid),
        )
    dns = demo.info.dns
    table.add_row("dns", "DNS server", f"{dns.host}:{dns.port}", dns.host, "",
                  Text("running" if snapshot.dns_running else "exited",
                       style="green" if snapshot.dns_running else "red"),
                  "", "", "", _num(dns.pid))
    return table


def _num(value: int | None) -> str:
    return "" if value is None else str(value)


def sessions_table(sessions: tuple[SessionView, ...]) -> Table:
    """The synthetic session pairs: who helps whom from where, and on which nodes."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("Pair", "left"), ("Representative", "left"), ("From", "left"),
                          ("Rep node", "left"), ("Customer from", "left"),
                          ("Customer node", "left"), ("State", "left"),
                          ("Sessions", "right"), ("PIDs", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    styles = {"running": "green", "waiting": "yellow", "starting": "yellow"}
    for p in sessions:
        state = p.state if p.error is None or p.state == "running" else f"{p.state}: {p.error}"
        pids = " ".join(str(x) for x in (p.rep_pid, p.customer_pid) if x)
        table.add_row(
            p.name, p.representative, f"{p.rep_region} {p.rep_address}", p.rep_node or "",
            f"{p.customer_region} {p.customer_address}", p.customer_node or "",
            Text(state, style=styles.get(p.state, "red" if p.error else "")),
            str(p.sessions), pids,
        )
    return table


def live_view(demo: DemoCluster, snapshot: Snapshot) -> Group:
    up = int(time.time() - demo.started_at)
    rev = "?" if snapshot.revision is None else str(snapshot.revision)
    sync = "  [yellow]sync needed[/]" if snapshot.sync_needed else ""
    method = snapshot.method or demo.choice.describe()
    head = (f"[bold]Atlas demo[/] {demo.layout.site} · method {method} · "
            f"revision {rev}{sync} · up {up // 60}m{up % 60:02d}s")
    parts: list[RenderableType] = [head, nodes_table(demo, snapshot)]
    if snapshot.sessions:
        running = sum(1 for p in snapshot.sessions if p.state == "running")
        parts += [f"[bold]Synthetic sessions[/] {running} of {len(snapshot.sessions)} running",
                  sessions_table(snapshot.sessions)]
    if snapshot.error:
        parts.append(f"[red]{snapshot.error}[/]")
    parts.append("[dim]Ctrl-C stops every process of the demo.[/]")
    return Group(*parts)


def summary(demo: DemoCluster, snapshot: Snapshot, dir_arg: Path) -> Group:
    info, lay = demo.info, demo.layout
    q = shlex.quote
    ca, dns = q(info.ca_file), lay.dns
    us, asia = lay.regions[0], lay.regions[1]
    rep, admin = info.representative, info.admin
    d = q(str(dir_arg))
    lines: list[RenderableType] = [
        "",
        f"[bold green]Atlas demo is running[/]: {lay.site}, {len(lay.nodes)} nodes, "
        f"method {demo.choice.describe()}, revision {info.revision}",
        nodes_table(demo, snapshot),
        f"[bold]/login[/]          {info.login_url}   user [bold]{admin.username}[/]   "
        f"password [bold]{admin.password}[/]",
        f"  a browser needs the demo's names: add \"{lay.primary.listen_ip} {lay.site}\" to "
        f"/etc/hosts, or run chromium --host-resolver-rules=\"MAP {lay.site} "
        f"{lay.primary.listen_ip}\"; trust {info.ca_file} or accept the warning",
        f"[bold]CA file[/]         {info.ca_file}",
        f"[bold]DNS server[/]      {dns}   e.g. dig @{lay.dns_ip} -p {lay.dns_port} "
        f"-b {us.probe_address(5)} +short {lay.a_record_hostname}",
        f"[bold]API account[/]     {info.api_account.client_id}  (secret in {info.env_file}; "
        f"`source {q(info.env_file)}` sets ATLAS_URL, ATLAS_CLIENT_ID, … for atlas cluster)",
        f"[bold]Representative[/]  {rep.username} / {rep.password}",
        f"[bold]Cluster test[/]    {info.cluster_test_plan}   (`source {q(info.env_file)}; "
        f"atlas cluster test {q(info.cluster_test_plan)}`; test representative "
        f"{rep.username})",
        f"[bold]State, logs[/]     {demo.paths.demo_file}, {demo.paths.root / 'logs'}",
        "",
        "[bold]Try it[/] in another terminal:",
        f"  # a representative in the US ({us.client_networks[0]})",
        f"  ATLAS_PASSWORD={q(rep.password)} atlas rep --site {lay.site_url} "
        f"--user {rep.username} --generate-key --accept-next "
        f"--source-address {us.probe_address(10)} --tz-offset "
        f"{us.timezone} --ca-file {ca} --dns {dns}",
        f"  # a customer in Asia ({asia.client_networks[0]}), with a session key from the "
        "representative",
        f"  atlas customer --site {lay.site_url} --key KEY --source-address "
        f"{asia.probe_address(5)} --tz-offset {asia.timezone} --ca-file {ca} --dns {dns}",
        f"  # another method, the cluster test plan rewritten: atlas demo set-method "
        f"timezone --dir {d}",
        f"  # stop the demo from elsewhere: atlas demo stop --dir {d}",
        "",
    ]
    if snapshot.sessions or demo.pairs:
        lines[3:3] = [
            f"[bold]Synthetic sessions[/] {len(demo.pairs)} customer/representative pairs, "
            f"{SIZE} test pattern at {FPS:g} fps, {demo.session_seconds:g}-second sessions "
            f"started again when they end; logs in {demo.paths.session_log_dir}",
            sessions_table(demo.session_views()),
        ]
    return Group(*lines)


@app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    directory: DirOption = DEFAULT_DIR,
    method: Annotated[MethodName, typer.Option(
        help="Method for Choosing Traffic Nodes; 'prefixes' is random with every traffic "
        "node's Network Address Prefixes set")] = MethodName.RANDOM,
    prefixes: Annotated[bool | None, typer.Option(
        "--prefixes/--no-prefixes",
        help="Give the traffic nodes their region's client networks as prefixes (default: "
        "yes for random and prefixes, no for the other methods, which prefixes override)",
        show_default=False)] = None,
    site: Annotated[str | None, typer.Option(
        help=f"Support site hostname (new directories; default {DEFAULT_SITE})",
        show_default=False)] = None,
    port: Annotated[int | None, typer.Option(
        help=f"Port every node listens on (new directories; default {DEFAULT_PORT})",
        min=1, max=65535, show_default=False)] = None,
    dns_port: Annotated[int | None, typer.Option(
        help=f"DNS server port (default {DEFAULT_DNS_PORT}, or a free one; 0: any)",
        min=0, max=65535, show_default=False)] = None,
    headless: Annotated[bool, typer.Option(
        "--headless", help="No live view: print the summary, wait for SIGTERM/SIGINT")] = False,
    sessions: Annotated[int | None, typer.Option(
        help="N synthetic customer/representative pairs (alternating regions) streaming "
        "test-pattern screens through the cluster, started again when a session ends",
        min=1, max=50, show_default=False)] = None,
    session_length: Annotated[float, typer.Option(
        help="How long each synthetic session lasts before its pair starts a new one "
        "(seconds)", min=10.0)] = 300.0,
) -> None:
    """Bring up a whole cluster on this machine and keep it running until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return

    setup_logging("warning")
    options = DemoOptions(root=directory, method=method.value, prefixes=prefixes, site=site,
                          port=port, dns_port=dns_port, sessions=sessions,
                          session_seconds=session_length)
    ui = ConsoleUi(out, headless=headless, dir_arg=directory)
    try:
        run(options, ui)
    except DemoError as exc:
        raise _fail(str(exc), exc.exit_code) from None


@app.command("set-method")
def set_method(
    method: Annotated[MethodName, typer.Argument(
        help="The new Method for Choosing Traffic Nodes (as --method of `atlas demo`)",
        show_default=False)],
    prefixes: Annotated[bool | None, typer.Option(
        "--prefixes/--no-prefixes",
        help="Give the traffic nodes their region's client networks as prefixes (default: "
        "yes for random and prefixes, no for the other methods)", show_default=False)] = None,
    directory: RunningDirOption = DEFAULT_DIR,
) -> None:
    """Change the method of the demo running in a directory, through the REST API, sync,
    and rewrite its cluster test plan."""
    setup_logging("warning")

    def say(text: str) -> None:
        out.print(text, highlight=False, markup=False)

    try:
        change(directory, method.value, prefixes, say)
    except DemoError as exc:
        raise _fail(str(exc), exc.exit_code) from None


@app.command("stop")
def stop(directory: DirOption = DEFAULT_DIR) -> None:
    """Stop the demo running in a directory (started in another terminal or by a script)."""
    try:
        report = stop_demo(directory)
    except DemoError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    if report.orchestrator is not None:
        how = "killed after the timeout" if report.killed_orchestrator else "stopped"
        out.print(f"The demo in {directory} (pid {report.orchestrator}) {how}.",
                  highlight=False)
    if report.leftovers:
        out.print(f"Stopped processes left running: {', '.join(report.leftovers)}",
                  highlight=False)
    if not report.anything:
        out.print(f"No demo is running in {directory}.", highlight=False)


__all__ = ["app"]
