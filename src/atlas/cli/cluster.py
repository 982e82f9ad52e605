"""``atlas cluster``: the cluster page of /login from a terminal, over ``/api/v1/cluster``.

Every command talks to a running primary master through :mod:`atlas.net.api_client` (site
URL and API account from ``--url``/``--client-id``/``--client-secret``/``--ca-file`` or
``ATLAS_URL``/``ATLAS_CLIENT_ID``/``ATLAS_CLIENT_SECRET``/``ATLAS_CA_FILE``) and exits
with the codes listed there (0 ok, 1 failed, 2 usage/validation, 3 auth, 4 conflict,
5 unreachable).

``apply FILE`` is declarative: the file describes the whole cluster (the shape of
``docs/examples/cluster.toml``); the command prints the plan (:mod:`atlas.cluster_plan`)
and applies it as one revision with ``If-Match``, so a change made meanwhile by someone
else is refused (exit 4) rather than overwritten. ``export`` writes the current document
in the same shape, and ``export`` → ``apply`` changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import inspect
import re
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import tomli_w
import typer
from pydantic import ValidationError
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from atlas.cli.cluster_test import test_cmd
from atlas.cli.node import err, out
from atlas.cluster_plan import carry_guids, plan
from atlas.model.config import ClusterConfig, SelectionMethod, TrafficNode
from atlas.model.errors import describe_errors
from atlas.net.api_client import (
    ENV_CA_FILE,
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_URL,
    EXIT_FAILED,
    AtlasClient,
    ClientError,
    ConflictError,
    Connection,
    UsageError,
    node_path,
)
from atlas.node.roles import Role
from atlas.selection.client import ClientKind
from atlas.web.api_v1.cluster_models import (
    AcceptingOut,
    ChangeOut,
    ClusterOut,
    DisableReportOut,
    HistoryOut,
    RouteOut,
    SyncProgressOut,
    SyncReportOut,
    SyncStatusOut,
)

app = typer.Typer(
    no_args_is_help=True,
    help="The cluster of a running primary master node, over its /api/v1 "
    f"(site and API account from --url/--client-id/--client-secret/--ca-file or "
    f"{ENV_URL}/{ENV_CLIENT_ID}/{ENV_CLIENT_SECRET}/{ENV_CA_FILE}).",
)

CLUSTER = "/api/v1/cluster"
DOCUMENT = f"{CLUSTER}/document"
SYNC = f"{CLUSTER}/sync"
SYNC_TIMEOUT = 600.0
POLL_SECONDS = 0.25

F = TypeVar("F", bound=Callable[..., None])
Work = Callable[[AtlasClient], Awaitable[int]]


# --- connection options on every command ----------------------------------------------------

UrlOpt = Annotated[str | None, typer.Option(
    "--url", help=f"Site URL https://HOST[:PORT] of the primary master (env {ENV_URL})")]
ClientIdOpt = Annotated[str | None, typer.Option(
    "--client-id", help=f"API account client id (env {ENV_CLIENT_ID})")]
ClientSecretOpt = Annotated[str | None, typer.Option(
    "--client-secret", help=f"API account client secret (env {ENV_CLIENT_SECRET})")]
CaFileOpt = Annotated[Path | None, typer.Option(
    "--ca-file", help=f"CA certificate to trust (PEM) (env {ENV_CA_FILE})")]

_CONNECTION_PARAMS = (
    inspect.Parameter("url", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=UrlOpt),
    inspect.Parameter("client_id", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=ClientIdOpt),
    inspect.Parameter("client_secret", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=ClientSecretOpt),
    inspect.Parameter("ca_file", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=CaFileOpt),
)


def connected(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a command the four connection options; it receives ``conn: Connection``."""
    sig = inspect.signature(fn, eval_str=True)
    params = [p for p in sig.parameters.values() if p.name != "conn"]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> None:
        values = {p.name: kwargs.pop(p.name, None) for p in _CONNECTION_PARAMS}
        try:
            conn = Connection.resolve(**values)
        except ClientError as exc:
            raise _exit(exc) from None
        fn(conn=conn, **kwargs)

    new_params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*new_params, *_CONNECTION_PARAMS])
    wrapper.__annotations__ = {p.name: p.annotation for p in (*new_params, *_CONNECTION_PARAMS)}
    del wrapper.__wrapped__
    return wrapper


def _exit(exc: ClientError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
    for f in exc.fields:
        err.print(f"  {f.field or '(request)'}: {f.message}", highlight=False)
    return typer.Exit(exc.exit_code)


def _run(conn: Connection, work: Work) -> None:
    """Run ``work`` with a client; exit with its code or the error's."""

    async def main() -> int:
        async with AtlasClient(conn) as api:
            return await work(api)

    try:
        code = asyncio.run(main())
    except ClientError as exc:
        raise _exit(exc) from None
    if code:
        raise typer.Exit(code)


def _usage(message: str) -> typer.Exit:
    return _exit(UsageError(message))


# --- formatting -----------------------------------------------------------------------------


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    seconds = (dt.datetime.now(dt.UTC) - value).total_seconds()
    if seconds < 120:
        return f"{max(0, int(seconds))} s ago"
    if seconds < 7200:
        return f"{int(seconds // 60)} min ago"
    return _when(value)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _print_change(result: ChangeOut, what: str) -> None:
    if result.changed:
        out.print(f"{what}: saved as revision {result.revision}.", highlight=False)
    else:
        out.print(f"{what}: no change (revision {result.revision} stays).", highlight=False)
    if result.sync_needed:
        out.print("Sync needed: run `atlas cluster sync` to push the configuration to the "
                  "traffic nodes.", highlight=False)


async def _document(api: AtlasClient) -> tuple[ClusterConfig, str]:
    """The current document and its ETag; a clear error off a primary master."""
    status, etag = await api.call(ClusterOut, "GET", CLUSTER)
    if status.role is not Role.PRIMARY or status.document is None:
        raise ConflictError(_not_primary_message(status))
    return status.document, etag or f"rev-{status.revision}"


def _not_primary_message(status: ClusterOut) -> str:
    if status.role is Role.TRAFFIC and status.document is not None:
        return (f"this node is a traffic node of {status.document.site_hostname}; change "
                f"the cluster on its master https://{status.document.primary.public}")
    if status.role is Role.STANDALONE:
        return "this node is not in a cluster: create one with `atlas cluster create`"
    return f"this node is {status.role.value}: change the cluster on the primary master"


def _find(config: ClusterConfig, name: str) -> TrafficNode:
    found = config.node_by_name(name)
    if not isinstance(found, TrafficNode):
        names = ", ".join(t.name for t in config.traffic_nodes) or "none"
        raise UsageError(f"the cluster has no traffic node named {name!r} (traffic nodes: "
                         f"{names})")
    return found


# --- TOML: export and locating errors in a file ---------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _toml_table(header: str, data: dict[str, Any]) -> list[str]:
    lines = [header] if header else []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict) and set(value) == {"host", "port"}:
            value = f"{value['host']}:{value['port']}"
        lines.append(f"{key} = {_toml_value(value)}")
    return lines


def to_toml(config: ClusterConfig, *, source: str = "") -> str:
    """The document as a cluster TOML file (docs/configuration.md), without ``revision``."""
    data = config.model_dump(mode="json")
    head = ["# Atlas cluster configuration (docs/configuration.md)."]
    if source:
        head.append(f"# Exported from {source} at revision {config.revision}.")
    lines = [*head, *_toml_table("", {"site_hostname": data["site_hostname"]}), ""]
    lines += [*_toml_table("[primary]", data["primary"]), ""]
    if data.get("backup"):
        lines += [*_toml_table("[backup]", data["backup"]), ""]
    lines += [*_toml_table("[selection]", data["selection"]), ""]
    lines += [*_toml_table("[health]", data["health"]), ""]
    for node in data["traffic_nodes"]:
        lines += [*_toml_table("[[traffic_nodes]]", node), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


_ARRAY_HEADER = re.compile(r"\s*\[\[\s*([A-Za-z0-9_-]+)\s*\]\]")
_TABLE_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")
_TABLES = ("primary", "backup", "selection", "health")


def toml_line(text: str, field: str) -> int | None:
    """The line (1-based) of ``field`` (``traffic_nodes.1.prefixes``) in a cluster TOML
    file written with tables, or of its table when the key is absent; None if unknown."""
    parts = field.split(".") if field else []
    table: tuple[str | int, ...] = ()
    rest = parts
    if len(parts) >= 2 and parts[0] == "traffic_nodes" and parts[1].isdigit():
        table, rest = ("traffic_nodes", int(parts[1])), parts[2:]
    elif parts and parts[0] in _TABLES:
        table, rest = (parts[0],), parts[1:]
    key = rest[0] if rest else None
    current: tuple[str | int, ...] = ()
    counters: dict[str, int] = {}
    header_line: int | None = 1 if not table else None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
        m = _ARRAY_HEADER.match(stripped)
        if m:
            counters[m.group(1)] = counters.get(m.group(1), -1) + 1
            current = (m.group(1), counters[m.group(1)])
        else:
            m = _TABLE_HEADER.match(stripped)
            if m:
                current = (m.group(1),)
            else:
                m = _KEY.match(stripped)
                if m and current == table and key is not None and m.group(1) == key:
                    return number
                continue
        if current == table:
            header_line = number
    return header_line


def _file_errors(path: Path, text: str, exc: ValidationError) -> list[str]:
    lines = []
    for problem in describe_errors(exc):
        where = toml_line(text, problem["field"])
        place = f"{path}:{where}" if where else str(path)
        lines.append(f"{place}: {problem['field'] or '(document)'}: {problem['message']}")
    return lines


def read_cluster_file(path: Path) -> ClusterConfig:
    """A cluster TOML file → ClusterConfig; :class:`UsageError` names the line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc})") from None
    try:
        return ClusterConfig.from_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        problems = _file_errors(path, text, exc)
        raise UsageError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)
                         ) from None


# --- status ---------------------------------------------------------------------------------


def _summary_table(status: ClusterOut) -> Table:
    table = Table(show_header=False, box=box.SIMPLE, title="Cluster", title_justify="left")
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    table.add_row("Role", status.role.value)
    table.add_row("Current status", status.description)
    doc = status.document
    if doc is not None:
        table.add_row("Site hostname", doc.site_hostname)
        table.add_row("Revision", str(status.revision))
        if status.role is Role.PRIMARY:
            table.add_row("Sync needed", _yes(status.sync_needed))
        for label, master in (("Primary master node", doc.primary),
                              ("Backup master node", doc.backup)):
            if master is None:
                continue
            text = f"{master.name}  {master.public}"
            if master.internal is not None:
                text += f"  (internal {master.internal})"
            if master.guid:
                text += f"  GUID {master.guid}"
            table.add_row(label, text)
        sel = doc.selection
        method = sel.method.value
        extra = {SelectionMethod.SRV: sel.srv_name, SelectionMethod.A_RECORD:
                 sel.a_record_hostname, SelectionMethod.ANYCAST:
                 f"{sel.anycast_address} port {sel.anycast_port} (TLS {sel.anycast_tls_name})"}
        if sel.method in extra:
            method += f"  {extra[sel.method]}"
        table.add_row("Method for choosing", method)
        table.add_row("Master fallback limit", str(sel.master_fallback_limit))
        table.add_row("Health checks", f"every {doc.health.interval_seconds:g} s, offline "
                      f"after {doc.health.timeout_seconds:g} s")
    if status.member_name:
        table.add_row("Name in the cluster", status.member_name)
    if status.sync.started_at is not None:
        state = "running" if status.sync.running else "finished"
        table.add_row("Last data sync", f"{state} {_when(status.sync.started_at)} "
                      f"(revision {status.sync.revision}, {status.sync.done}/"
                      f"{status.sync.total} nodes)")
    return table


def _nodes_table(status: ClusterOut) -> Table:
    table = Table(title="Traffic nodes", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("Name", "Region", "Public address", "Accepting", "State", "Last seen",
                 "Version", "Revision", "Load", "Sync"):
        table.add_column(name, overflow="fold")
    for n in status.traffic_nodes:
        accepting = "yes" if n.accepting else (
            f"no (draining: {n.sessions_left} sessions left)" if n.sessions_left is not None
            else "no")
        load = "-"
        if n.load is not None:
            load = (f"{n.load.connected_clients}/{n.capacity} clients, "
                    f"{n.load.active_sessions} sessions")
        sync = "needs sync" if n.needs_sync else "up to date"
        if n.sync is not None and n.sync.last_sync_status not in (None, 0):
            sync += f" (last failed: {n.sync.last_error_reason})"
        state = n.state if n.state != "viable" else "[green]viable[/]"
        table.add_row(
            n.name, n.region, n.public, accepting, state,
            _ago(n.last_seen) if n.online else f"offline ({_ago(n.last_seen)})",
            n.version or "-", f"{n.acknowledged_revision}/{status.revision}", load, sync,
        )
    return table


@app.command("status")
@connected
def status_cmd(
    conn: Connection,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")] = False,
) -> None:
    """Current Status, the configuration and every traffic node's state."""

    async def work(api: AtlasClient) -> int:
        status, _ = await api.call(ClusterOut, "GET", CLUSTER)
        if as_json:
            print(status.model_dump_json(indent=2))
            return 0
        out.print(_summary_table(status))
        if status.role is Role.PRIMARY:
            if status.traffic_nodes:
                out.print(_nodes_table(status))
            else:
                out.print("No traffic nodes. Add one with `atlas cluster add-node`.")
        return 0

    _run(conn, work)


# --- create and edit ------------------------------------------------------------------------


@app.command("create")
@connected
def create_cmd(
    conn: Connection,
    site_hostname: Annotated[str, typer.Option(help="Support site hostname, e.g. "
                                               "support.example.com")],
    name: Annotated[str | None, typer.Option(help="Primary master node name "
                                             "(default: the node's)")] = None,
    public: Annotated[str | None, typer.Option(help="Public address HOST:PORT "
                                               "(default: the node's)")] = None,
    internal: Annotated[str | None, typer.Option(help="Internal address HOST:PORT "
                                                 "(default: the public one)")] = None,
) -> None:
    """Create New Cluster: make the node at --url its primary master node."""
    primary = {k: v for k, v in (("name", name), ("public", public), ("internal", internal))
               if v is not None}

    async def work(api: AtlasClient) -> int:
        result, _ = await api.call(ChangeOut, "POST", CLUSTER, if_match="rev-0",
                                   json_body={"site_hostname": site_hostname,
                                              "primary": primary})
        assert result.document is not None
        out.print(f"Created cluster {result.document.site_hostname} with "
                  f"{result.document.primary.name} as primary master node "
                  f"(revision {result.revision}).", highlight=False)
        return 0

    _run(conn, work)


@app.command("set-primary")
@connected
def set_primary_cmd(
    conn: Connection,
    name: Annotated[str | None, typer.Option(help="New name")] = None,
    public: Annotated[str | None, typer.Option(help="Public address HOST:PORT")] = None,
    internal: Annotated[str | None, typer.Option(
        help="Internal address HOST:PORT ('' for the same as public)")] = None,
) -> None:
    """Update Primary Node: its name and addresses."""

    async def work(api: AtlasClient) -> int:
        doc, etag = await _document(api)
        p = doc.primary
        body = {
            "name": name if name is not None else p.name,
            "public": public if public is not None else str(p.public),
            "internal": (internal or None) if internal is not None else (
                str(p.internal) if p.internal is not None else None),
        }
        result, _ = await api.call(ChangeOut, "PUT", f"{CLUSTER}/primary", json_body=body,
                                   if_match=etag)
        _print_change(result, "Primary master node")
        return 0

    _run(conn, work)


PrefixOpt = Annotated[list[str] | None, typer.Option(
    "--prefix", help="Network address prefix ADDR or ADDR/MASK; repeat for several")]


@app.command("add-node")
@connected
def add_node_cmd(
    conn: Connection,
    name: Annotated[str, typer.Argument(help="Traffic node name, unique in the cluster")],
    public: Annotated[str, typer.Option(help="Public address HOST:PORT")],
    internal: Annotated[str | None, typer.Option(help="Internal address HOST:PORT")] = None,
    prefix: PrefixOpt = None,
    timezone: Annotated[str | None, typer.Option(
        help="Timezone Offset: +09:00 or an IANA zone such as Asia/Tokyo")] = None,
    capacity: Annotated[int | None, typer.Option(help="Clients it should carry")] = None,
    region: Annotated[str | None, typer.Option(help="Free text for tables")] = None,
    accepting: Annotated[bool, typer.Option(
        "--accepting/--not-accepting", help="Accepting New Client Connections")] = True,
) -> None:
    """Add Traffic Node."""
    body: dict[str, Any] = {"name": name, "public": public, "accepting": accepting}
    for key, value in (("internal", internal), ("timezone", timezone),
                       ("capacity", capacity), ("region", region)):
        if value is not None:
            body[key] = value
    if prefix:
        body["prefixes"] = prefix

    async def work(api: AtlasClient) -> int:
        _, etag = await _document(api)
        result, _ = await api.call(ChangeOut, "POST", f"{CLUSTER}/traffic-nodes",
                                   json_body=body, if_match=etag)
        _print_change(result, f"Added traffic node {name}")
        return 0

    _run(conn, work)


@app.command("edit-node")
@connected
def edit_node_cmd(
    conn: Connection,
    node: Annotated[str, typer.Argument(help="The traffic node's current name")],
    name: Annotated[str | None, typer.Option(help="New name")] = None,
    public: Annotated[str | None, typer.Option(help="Public address HOST:PORT")] = None,
    internal: Annotated[str | None, typer.Option(
        help="Internal address HOST:PORT ('' for the same as public)")] = None,
    prefix: PrefixOpt = None,
    clear_prefixes: Annotated[bool, typer.Option(help="Remove every prefix")] = False,
    timezone: Annotated[str | None, typer.Option(help="Timezone Offset")] = None,
    capacity: Annotated[int | None, typer.Option(help="Clients it should carry")] = None,
    region: Annotated[str | None, typer.Option(help="Free text for tables")] = None,
    accepting: Annotated[bool | None, typer.Option(
        "--accepting/--not-accepting", help="Accepting New Client Connections")] = None,
) -> None:
    """Edit Traffic Node: change the fields given, keep the others."""
    if prefix and clear_prefixes:
        raise _usage("--prefix and --clear-prefixes exclude each other")

    async def work(api: AtlasClient) -> int:
        doc, etag = await _document(api)
        target = _find(doc, node)
        body: dict[str, Any] = target.model_dump(mode="json")
        for key, value in (("name", name), ("public", public), ("timezone", timezone),
                           ("capacity", capacity), ("region", region),
                           ("accepting", accepting)):
            if value is not None:
                body[key] = value
        if internal is not None:
            body["internal"] = internal or None
        if prefix:
            body["prefixes"] = prefix
        if clear_prefixes:
            body["prefixes"] = []
        result, _ = await api.call(ChangeOut, "PUT", node_path(target.name), json_body=body,
                                   if_match=etag)
        _print_change(result, f"Traffic node {body['name']}")
        return 0

    _run(conn, work)


@app.command("remove-node")
@connected
def remove_node_cmd(
    conn: Connection,
    node: Annotated[str, typer.Argument(help="The traffic node's name")],
) -> None:
    """Remove Traffic Node from the configuration."""

    async def work(api: AtlasClient) -> int:
        doc, etag = await _document(api)
        target = _find(doc, node)
        result, _ = await api.call(ChangeOut, "DELETE", node_path(target.name), if_match=etag)
        _print_change(result, f"Removed traffic node {target.name}")
        return 0

    _run(conn, work)


@app.command("set-method")
@connected
def set_method_cmd(
    conn: Connection,
    method: Annotated[SelectionMethod, typer.Argument(help="Method for Choosing Traffic Nodes")],
    srv_name: Annotated[str | None, typer.Option(help="SRV name (method srv)")] = None,
    a_record_hostname: Annotated[str | None, typer.Option(
        help="Shared hostname (method a_record)")] = None,
    anycast_address: Annotated[str | None, typer.Option(
        help="Shared IP address (method anycast)")] = None,
    anycast_port: Annotated[int | None, typer.Option(help="Anycast port")] = None,
    anycast_tls_name: Annotated[str | None, typer.Option(
        help="TLS name of the anycast nodes")] = None,
    fallback_limit: Annotated[int | None, typer.Option(
        help="Master fallback client limit")] = None,
) -> None:
    """Method for Choosing Traffic Nodes, its settings and the master fallback limit."""

    async def work(api: AtlasClient) -> int:
        doc, etag = await _document(api)
        body: dict[str, Any] = doc.selection.model_dump(mode="json")
        body["method"] = method.value
        for key, value in (("srv_name", srv_name), ("a_record_hostname", a_record_hostname),
                           ("anycast_address", anycast_address),
                           ("anycast_port", anycast_port),
                           ("anycast_tls_name", anycast_tls_name),
                           ("master_fallback_limit", fallback_limit)):
            if value is not None:
                body[key] = value
        result, _ = await api.call(ChangeOut, "PUT", f"{CLUSTER}/selection", json_body=body,
                                   if_match=etag)
        _print_change(result, f"Method {method.value}")
        return 0

    _run(conn, work)


@app.command("set-health")
@connected
def set_health_cmd(
    conn: Connection,
    interval: Annotated[float | None, typer.Option(help="Seconds between checks")] = None,
    timeout: Annotated[float | None, typer.Option(help="Offline after this many seconds "
                                                  "without a successful check")] = None,
) -> None:
    """How often the master health-checks each traffic node."""

    async def work(api: AtlasClient) -> int:
        doc, etag = await _document(api)
        body: dict[str, Any] = doc.health.model_dump(mode="json")
        if interval is not None:
            body["interval_seconds"] = interval
        if timeout is not None:
            body["timeout_seconds"] = timeout
        result, _ = await api.call(ChangeOut, "PUT", f"{CLUSTER}/health-settings",
                                   json_body=body, if_match=etag)
        _print_change(result, "Health checks")
        return 0

    _run(conn, work)


@app.command("set-accepting")
@connected
def set_accepting_cmd(
    conn: Connection,
    node: Annotated[str, typer.Argument(help="The traffic node's name")],
    state: Annotated[str, typer.Argument(help="on or off")],
) -> None:
    """Accepting New Client Connections, at once; 'off' drains the node.

    Exits 1 when the node could not be told (it then gets the change at the next sync).
    """
    wanted = {"on": True, "off": False}.get(state.strip().lower())
    if wanted is None:
        raise _usage(f"STATE must be on or off, not {state!r}")

    async def work(api: AtlasClient) -> int:
        doc, etag = await _document(api)
        target = _find(doc, node)
        result, _ = await api.call(AcceptingOut, "PUT", f"{node_path(target.name)}/accepting",
                                   json_body={"accepting": wanted}, if_match=etag)
        verb = "accepting" if result.accepting else "not accepting"
        change = "" if result.changed else " (unchanged)"
        out.print(f"{result.name} is {verb} new client connections{change}; revision "
                  f"{result.revision}.", highlight=False)
        if not result.confirmed:
            err.print(f"[yellow]warning:[/] {result.name} did not confirm "
                      f"({result.reason}); it gets the change at the next data sync.",
                      highlight=False)
            return EXIT_FAILED
        if not result.accepting:
            left = "?" if result.sessions_left is None else str(result.sessions_left)
            out.print(f"draining: {left} sessions left", highlight=False)
        return 0

    _run(conn, work)


# --- Sync Now -------------------------------------------------------------------------------

_STATE_STYLE = {"pending": "dim", "started": "cyan", "finished": "green", "failed": "red"}


def _update_bars(progress: Progress, bars: dict[str, TaskID], status: SyncStatusOut) -> None:
    for p in status.nodes:
        if p.node not in bars:
            bars[p.node] = progress.add_task(p.node, total=1, state="pending")
        done = p.state in ("finished", "failed")
        label = f"[{_STATE_STYLE.get(p.state, '')}]{p.state}[/]"
        if p.state == "failed" and p.reason:
            label += f" ({p.reason})"
        progress.update(bars[p.node], completed=1 if done else 0, state=label)


@app.command("sync")
@connected
def sync_cmd(conn: Connection) -> None:
    """Sync Now: push the configuration to every traffic node.

    Shows a progress bar per node while it runs, then a summary table. Exits 1 if any
    node failed.
    """

    async def work(api: AtlasClient) -> int:
        await api.call(SyncStatusOut, "GET", SYNC)  # fails early: auth, role, reachability
        task = asyncio.create_task(api.call(SyncReportOut, "POST", SYNC, timeout=SYNC_TIMEOUT))
        bars: dict[str, TaskID] = {}
        progress = Progress(
            TextColumn("{task.description}", style="bold"), BarColumn(),
            TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=out,
            transient=False,
        )
        with progress:
            while not task.done():
                try:
                    status, _ = await api.call(SyncStatusOut, "GET", SYNC)
                except ClientError:
                    status = None
                if status is not None and status.running:
                    _update_bars(progress, bars, status)
                await asyncio.wait({task}, timeout=POLL_SECONDS)
            report, _ = task.result()
            final = SyncStatusOut(
                running=False, revision=report.revision, started_at=report.started_at,
                finished_at=report.finished_at, done=len(report.results),
                total=len(report.results), nodes=[])
            final.nodes = [
                _progress(r.name, r.address, "finished" if r.ok else "failed", r.reason)
                for r in report.results
            ]
            _update_bars(progress, bars, final)
        table = Table(title=f"Data sync of revision {report.revision}: {report.summary}",
                      title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("Node", "Address", "Result", "Seconds", "Version", "Message"):
            table.add_column(column, overflow="fold")
        for r in report.results:
            table.add_row(r.name, r.address, "[green]synced[/]" if r.ok else "[red]failed[/]",
                          f"{r.seconds:.2f}", r.version or "-", r.message or "")
        out.print(table)
        if not report.results:
            out.print("No traffic nodes to sync.")
        return 0 if report.ok else EXIT_FAILED

    _run(conn, work)


def _progress(node: str, address: str, state: str, reason: str | None) -> SyncProgressOut:
    return SyncProgressOut(node=node, address=address, state=state, done=0, total=0,
                           reason=reason)


# --- Disable Cluster ------------------------------------------------------------------------


@app.command("disable")
@connected
def disable_cmd(
    conn: Connection,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Disable Cluster: remove every node and notify the traffic nodes.

    Exits 1 if a node could not be notified: remove it from the cluster by hand on that
    node.
    """
    if not yes:
        if not sys.stdin.isatty():
            raise _usage("disabling the cluster needs --yes when not run interactively")
        typer.confirm("Remove every node, including this one, from the cluster?", abort=True)

    async def work(api: AtlasClient) -> int:
        _, etag = await _document(api)
        report, _ = await api.call(DisableReportOut, "POST", f"{CLUSTER}/disable",
                                   if_match=etag, timeout=SYNC_TIMEOUT)
        table = Table(title="Disable Cluster: notifications", title_justify="left",
                      box=box.SIMPLE_HEAD)
        for column in ("Node", "Address", "Notified", "Message"):
            table.add_column(column, overflow="fold")
        for r in report.results:
            table.add_row(r.name, r.address, "[green]yes[/]" if r.notified else "[red]no[/]",
                          r.message or "")
        if report.results:
            out.print(table)
        out.print("The cluster is disabled: this node is standalone again.")
        if report.unreachable:
            err.print("[yellow]warning:[/] could not notify "
                      f"{', '.join(report.unreachable)}: log in to each and remove it from "
                      "the cluster by hand.", highlight=False)
            return EXIT_FAILED
        return 0

    _run(conn, work)


# --- history, export, route -----------------------------------------------------------------


@app.command("history")
@connected
def history_cmd(
    conn: Connection,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows to show")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")] = False,
) -> None:
    """The Status History table, newest first."""

    async def work(api: AtlasClient) -> int:
        rows, _ = await api.call(HistoryOut, "GET", f"{CLUSTER}/history",
                                 params={"limit": str(limit)})
        if as_json:
            print(rows.model_dump_json(indent=2))
            return 0
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("Time", no_wrap=True)
        table.add_column("Status", justify="right")
        table.add_column("Message", overflow="fold")
        for r in rows.rows:
            status = str(r.status) if r.status == 0 else f"[red]{r.status}[/]"
            table.add_row(_when(r.time), status, r.message)
        out.print(table)
        return 0

    _run(conn, work)


@app.command("export")
@connected
def export_cmd(
    conn: Connection,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Write to this file, not stdout")] = None,
) -> None:
    """The current configuration as a cluster TOML file (what `apply` reads)."""

    async def work(api: AtlasClient) -> int:
        doc, _ = await api.call(ClusterConfig, "GET", DOCUMENT)
        text = to_toml(doc, source=conn.url)
        if output is None:
            sys.stdout.write(text)
        else:
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"{output}: cannot write it ({exc})") from None
            out.print(f"Wrote revision {doc.revision} to {output}", highlight=False)
        return 0

    _run(conn, work)


@app.command("route")
@connected
def route_cmd(
    conn: Connection,
    ip: Annotated[str, typer.Option(help="The client's IP address")],
    tz: Annotated[str | None, typer.Option(
        help="The client's UTC offset: +09:00 or minutes east of UTC")] = None,
    kind: Annotated[ClientKind, typer.Option(help="Client kind")] = ClientKind.SUPPORT_CUSTOMER,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")] = False,
) -> None:
    """Identify the Expected Node for a client: the master's choice now, and why.

    A dry run of the traffic-node selection with the live health of every node (guide:
    "Perform a … Cluster Test").
    """
    params = {"ip": ip, "kind": kind.value}
    if tz is not None:
        params["tz"] = tz

    async def work(api: AtlasClient) -> int:
        route, _ = await api.call(RouteOut, "GET", f"{CLUSTER}/route", params=params)
        if as_json:
            print(route.model_dump_json(indent=2))
            return 0
        d = route.decision
        if route.node is not None:
            target = f"traffic node {route.node} ({d.get('host')}:{d.get('port')})"
        elif route.outcome == "a_record":
            target = f"resolve {d.get('hostname')} (A/AAAA), port {d.get('port')}"
        elif route.outcome == "srv":
            target = f"resolve SRV {d.get('srv_name')}"
        elif route.outcome == "anycast":
            target = f"anycast {d.get('address')} port {d.get('port')}"
        else:
            target = f"the master ({d.get('host')}:{d.get('port')}), within the fallback " \
                     f"limit of {d.get('limit')}"
        offset = "none" if route.client.utc_offset_minutes is None else \
            f"{route.client.utc_offset_minutes:+d} min"
        out.print(f"Client:   {route.client.ip}, UTC offset {offset}, {route.client.kind.value}",
                  highlight=False)
        out.print(f"Decision: {target}", highlight=False)
        out.print(f"Rule:     {route.rule}", highlight=False)
        out.print(f"Reason:   {route.reason}", highlight=False)
        if route.prefix_match is not None and len(route.prefix_match.nodes) > 1:
            out.print(f"Tied:     {', '.join(route.prefix_match.nodes)}", highlight=False)
        out.print(f"Viable:   {', '.join(route.viable) or 'none'}", highlight=False)
        for name, why in route.not_viable.items():
            out.print(f"          {name}: {why}", highlight=False)
        return 0

    _run(conn, work)


# --- apply ----------------------------------------------------------------------------------


def _create_body(desired: ClusterConfig) -> dict[str, Any]:
    data = desired.model_dump(mode="json")
    primary = {"name": data["primary"]["name"], "public": data["primary"]["public"]}
    if data["primary"].get("internal") is not None:
        primary["internal"] = data["primary"]["internal"]
    body: dict[str, Any] = {"site_hostname": data["site_hostname"], "primary": primary,
                            "traffic_nodes": data["traffic_nodes"],
                            "selection": data["selection"], "health": data["health"]}
    if data.get("backup") is not None:
        body["backup"] = data["backup"]
    return body


@app.command("apply")
@connected
def apply_cmd(
    conn: Connection,
    file: Annotated[Path, typer.Argument(help="Cluster TOML file (docs/configuration.md)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only")] = False,
) -> None:
    """Make the cluster what FILE describes, in one revision.

    Prints the plan (what is added, changed field by field, removed), then applies it.
    The same file twice: "no changes". GUIDs the cluster knows are kept.
    """
    try:
        desired = read_cluster_file(file)
    except ClientError as exc:
        raise _exit(exc) from None

    async def work(api: AtlasClient) -> int:
        status, etag = await api.call(ClusterOut, "GET", CLUSTER)
        if status.role is Role.STANDALONE:
            current = None
        elif status.role is Role.PRIMARY and status.document is not None:
            current = status.document
        else:
            raise ConflictError(_not_primary_message(status))
        wanted = carry_guids(current, desired)
        the_plan = plan(current, wanted)
        if the_plan.empty:
            out.print(f"No changes: the cluster already matches {file} (revision "
                      f"{status.revision}).", highlight=False)
            return 0
        if current is None:
            out.print(f"Plan: create cluster {wanted.site_hostname} with this node as its "
                      "primary master node", highlight=False)
        else:
            out.print(f"Plan for revision {status.revision}:", highlight=False)
        for line in the_plan.lines():
            style = {"+": "green", "-": "red", "~": "yellow"}.get(line[:1])
            out.print(f"[{style}]{escape(line)}[/]" if style else escape(line), highlight=False)
        out.print(f"({the_plan.summary()})", highlight=False)
        if dry_run:
            out.print("Dry run: nothing applied.")
            return 0
        if current is None:
            result, _ = await api.call(ChangeOut, "POST", CLUSTER, if_match="rev-0",
                                       json_body=_create_body(wanted))
        else:
            result, _ = await api.call(ChangeOut, "PUT", DOCUMENT,
                                       json_body=wanted.model_dump(mode="json"),
                                       if_match=etag or f"rev-{status.revision}")
        _print_change(result, "Applied")
        return 0

    _run(conn, work)


app.command("test")(test_cmd)

__all__ = ["app", "read_cluster_file", "to_toml", "toml_line"]
