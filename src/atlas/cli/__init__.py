"""The ``atlas`` command line."""

from __future__ import annotations

from typing import Annotated

import typer

from atlas import SOFTWARE_VERSION
from atlas.cli import accounts, clients, cluster, demo, node, psk, users

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Atlas remote-support cluster.")


def _version(value: bool) -> None:
    if value:
        print(f"atlas {SOFTWARE_VERSION}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the Atlas version (the guide: every node must run the same) and exit",
    )] = False,
) -> None:
    """Atlas remote-support cluster."""

app.command("init")(node.init)
app.command("serve")(node.serve_cmd)
app.add_typer(demo.app, name="demo")
app.add_typer(node.certs_app, name="certs")
app.add_typer(accounts.app, name="api-account")
app.add_typer(psk.app, name="psk")
app.add_typer(cluster.app, name="cluster")
app.add_typer(users.app, name="user")
app.command("customer")(clients.customer)
app.command("rep")(clients.rep)


def main() -> None:
    app()
