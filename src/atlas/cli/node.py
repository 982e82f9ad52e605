"""``atlas init``, ``atlas serve`` and ``atlas certs``, and what every command on a data
directory shares."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from atlas.net import certs
from atlas.node.datadir import DataDir, DataDirError
from atlas.node.init import InitError, init_node
from atlas.node.logs import setup_logging
from atlas.node.server import ServeError, serve
from atlas.store.db import Database

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataDirArg = Annotated[Path, typer.Argument(help="The node's data directory")]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@contextmanager
def node_database(data_dir: Path) -> Iterator[Database]:
    """The database of the node in ``data_dir`` (a stopped or a running node: SQLite in
    WAL mode lets both write); a clear error when it is not a complete node."""
    dd = DataDir(data_dir)
    if not data_dir.is_dir():
        raise fail(f"{data_dir}: no such directory")
    try:
        dd.load_identity()
    except DataDirError as exc:
        raise fail(str(exc)) from None
    if not dd.db_file.exists():
        raise fail(f"{dd.db_file} is missing; is {data_dir} a complete Atlas node?")
    db = Database(dd.db_file)
    try:
        yield db
    finally:
        db.close()


def init(
    data_dir: DataDirArg,
    name: Annotated[str, typer.Option(help="Node name, unique in the cluster")],
    public: Annotated[str, typer.Option(help="Public address HOST:PORT (clients)")],
    internal: Annotated[
        str | None, typer.Option(help="Internal address HOST:PORT (node-to-node)")
    ] = None,
    listen: Annotated[
        str | None, typer.Option(help="Local IP to bind (default: what --public resolves to)")
    ] = None,
    cert: Annotated[Path | None, typer.Option(help="Certificate PEM (chain)")] = None,
    key: Annotated[Path | None, typer.Option(help="Private key PEM")] = None,
    ca_dir: Annotated[
        Path | None, typer.Option(help="Issue the certificate from this local CA")
    ] = None,
    trust: Annotated[
        Path | None, typer.Option(help="CA bundle to trust for node-to-node TLS")
    ] = None,
    admin_password: Annotated[
        str | None, typer.Option(
            envvar="ATLAS_ADMIN_PASSWORD", show_envvar=True,
            help="First admin password (default: generated, printed once); prefer the "
                 "environment variable: an option is visible to other users in ps")
    ] = None,
) -> None:
    """Create a node: GUID, name, addresses, TLS certificate, database, first admin."""
    try:
        result = init_node(
            data_dir, name=name, public=public, internal=internal, listen=listen, cert=cert,
            key=key, ca_dir=ca_dir, trust=trust, admin_password=admin_password,
        )
    except InitError as exc:
        raise fail(str(exc)) from None
    ident = result.identity
    out.print(f"Created node [bold]{ident.name}[/] in {data_dir}", highlight=False)
    out.print(f"  appliance GUID  {ident.guid}", highlight=False)
    out.print(f"  public address  {ident.public}  (listening on {ident.listen})", highlight=False)
    out.print(f"  /login          https://{ident.public}/login", highlight=False)
    out.print(f"  admin user      {result.admin_username}", highlight=False)
    if result.password_generated:
        out.print(f"  admin password  {result.admin_password}  (shown once)", highlight=False)
    for warning in result.warnings:
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False)


def serve_cmd(
    data_dir: DataDirArg,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Serve HTTPS for the node until SIGINT/SIGTERM."""
    setup_logging(log_level)
    try:
        asyncio.run(serve(data_dir))
    except ServeError as exc:
        raise fail(str(exc)) from None


certs_app = typer.Typer(no_args_is_help=True, help="A local certificate authority.")


@certs_app.command("ca")
def certs_ca(
    ca_dir: Annotated[Path, typer.Argument(help="Directory for ca.pem and ca-key.pem")],
    name: Annotated[str, typer.Option(help="CA common name")] = "Atlas local CA",
) -> None:
    """Create a local CA."""
    try:
        certs.create_ca_dir(ca_dir, name)
    except (certs.CertificateError, OSError) as exc:
        raise fail(str(exc)) from None
    out.print(f"Created CA {ca_dir / certs.CA_CERT}", highlight=False)


@certs_app.command("issue")
def certs_issue(
    ca_dir: Annotated[Path, typer.Argument(help="The CA directory")],
    names: Annotated[list[str], typer.Argument(help="DNS names (wildcards allowed)")],
    cert: Annotated[Path, typer.Option(help="Where to write the certificate")],
    key: Annotated[Path, typer.Option(help="Where to write the key")],
) -> None:
    """Issue a server certificate (e.g. ``'*.support.example.com' support.example.com``)."""
    try:
        ca = certs.load_ca_dir(ca_dir)
        pair = certs.issue(ca, names)
        cert.write_bytes(pair.cert_pem + ca.cert_pem)
        certs.write_private(key, pair.key_pem)
    except (certs.CertificateError, OSError) as exc:
        raise fail(str(exc)) from None
    out.print(f"Issued {cert} for {', '.join(names)}", highlight=False)
