"""``atlas api-account``: create, list and revoke API accounts on a node's data directory.

Works on a stopped node (straight on its database), and on a running one: SQLite in WAL
mode lets both write, and the running node sees a new account or a revocation at once.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich import box
from rich.table import Column, Table

from atlas.cli.node import DataDirArg, fail, node_database, out
from atlas.store.api_accounts import (
    ApiAccount,
    ApiAccountError,
    Permission,
    create_account,
    get_account_by_client_id,
    list_accounts,
    parse_permissions,
    revoke_account,
)

app = typer.Typer(
    no_args_is_help=True,
    help="API accounts for the Command API and /api/v1 (OAuth client credentials).",
)

PERMISSION_HELP = (
    ", ".join(p.value for p in Permission)
    + "; repeat for several (full implies read, write implies read)"
)


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%MZ")


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def _perms(acc: ApiAccount) -> str:
    return ", ".join(sorted(p.value for p in acc.permissions))


def _as_json(acc: ApiAccount) -> dict[str, object]:
    return {
        "client_id": acc.client_id,
        "name": acc.name,
        "permissions": sorted(p.value for p in acc.permissions),
        "created_at": acc.created_at,
        "revoked_at": acc.revoked_at,
        "active": acc.active,
    }


@app.command("create")
def create(
    data_dir: DataDirArg,
    name: Annotated[str, typer.Option(help="What the account is for, e.g. 'monitoring'")],
    permission: Annotated[list[str], typer.Option(help=PERMISSION_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")] = False,
) -> None:
    """Create an API account; its client secret is printed once and never stored."""
    try:
        perms = parse_permissions(permission)
    except ApiAccountError as exc:
        raise fail(f"--permission: {exc}") from None
    with node_database(data_dir) as db:
        try:
            new = create_account(db, name, perms)
        except ApiAccountError as exc:
            raise fail(f"--{exc}" if str(exc).startswith("name:") else str(exc)) from None
    acc = new.account
    if as_json:
        print(json.dumps({**_as_json(acc), "client_secret": new.client_secret}))
        return
    out.print(f"Created API account [bold]{acc.name}[/]", highlight=False)
    out.print(f"  client id      {acc.client_id}", highlight=False)
    out.print(f"  client secret  {new.client_secret}  (shown once: store it now)",
              highlight=False)
    out.print(f"  permissions    {_perms(acc)}", highlight=False)


@app.command("list")
def list_cmd(
    data_dir: DataDirArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")] = False,
) -> None:
    """List API accounts (secrets are never shown)."""
    with node_database(data_dir) as db:
        accounts = list_accounts(db)
    if as_json:
        print(json.dumps([_as_json(a) for a in accounts]))
        return
    if not accounts:
        out.print("No API accounts. Create one with `atlas api-account create`.")
        return
    table = Table(
        Column("Client ID", no_wrap=True, min_width=32),
        Column("Name", overflow="fold", min_width=10),
        Column("Permissions", no_wrap=True, min_width=12),
        Column("Created", no_wrap=True, min_width=10),
        Column("Status", no_wrap=True, min_width=7),
        box=box.SIMPLE_HEAD,
    )
    for acc in accounts:
        status = "active" if acc.active else "revoked"
        perms = "\n".join(sorted(p.value for p in acc.permissions))
        table.add_row(acc.client_id, acc.name, perms, _day(acc.created_at), status)
    out.print(table)


@app.command("revoke")
def revoke(
    data_dir: DataDirArg,
    client_id: Annotated[str, typer.Argument(help="The account's client id")],
) -> None:
    """Revoke an API account: its credentials and every token it holds stop working."""
    with node_database(data_dir) as db:
        acc = get_account_by_client_id(db, client_id.strip())
        if acc is None:
            raise fail(f"no API account with client id {client_id!r}; see `atlas api-account "
                       f"list {data_dir}`")
        if not acc.active:
            out.print(f"API account {acc.name} ({acc.client_id}) was already revoked on "
                      f"{_when(acc.revoked_at)}", highlight=False)
            return
        revoke_account(db, acc.id)
    out.print(f"Revoked API account [bold]{acc.name}[/] ({acc.client_id}); its tokens no "
              "longer work.", highlight=False)
