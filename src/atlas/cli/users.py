"""``atlas user``: representative accounts on a node's data directory, for automation.

Works straight on the node's database, like ``atlas api-account`` (a running node sees the
change at once: SQLite in WAL mode). Every value is checked before anything is stored; a
bad value or an unknown user ends with exit status 2 and a message naming the option.

A password comes from, in this order: ``--password-stdin`` (one line), the environment
variable ``ATLAS_PASSWORD``, or a hidden prompt asked twice (only on a terminal). It is
never printed, and never taken as a command-line argument (other users of the machine
could read it in ``ps``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from atlas.cli.node import DataDirArg, fail, out
from atlas.cli.node import node_database as database
from atlas.store import representatives as reps
from atlas.store.db import Database
from atlas.store.representatives import Representative, RepresentativeError

app = typer.Typer(
    no_args_is_help=True,
    help="Representative accounts (the people who help customers).",
)

PASSWORD_ENV = "ATLAS_PASSWORD"  # noqa: S105 (the variable's name, not a password)
OPTION = {"username": "--username", "display_name": "--display-name", "password": "password"}

UsernameArg = Annotated[str, typer.Argument(help="The representative's username")]
PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin",
                 help=f"Read the password from the first line of stdin (else ${PASSWORD_ENV}, "
                      "else a prompt)"),
]


def _refuse(exc: RepresentativeError) -> typer.Exit:
    return fail(f"{OPTION.get(exc.field, exc.field)} {exc.message}")


def _can_prompt() -> bool:
    """A hidden prompt needs a terminal; from a pipe it would echo or read the wrong thing."""
    return sys.stdin is not None and sys.stdin.isatty()


def _password(from_stdin: bool) -> str:
    """The new password from stdin, the environment or a prompt (see module doc); checked."""
    if from_stdin:
        password = typer.get_text_stream("stdin").readline().removesuffix("\n")
        password = password.removesuffix("\r")
    elif PASSWORD_ENV in os.environ:
        password = os.environ[PASSWORD_ENV]
    elif not _can_prompt():
        raise fail(f"no password given and stdin is not a terminal: use --password-stdin or "
                   f"${PASSWORD_ENV}")
    else:
        try:
            password = typer.prompt("Password", hide_input=True)
            again = typer.prompt("Repeat the password", hide_input=True)
        except typer.Abort:
            raise fail(f"no password given: use --password-stdin, ${PASSWORD_ENV} or the "
                       "prompt") from None
        if again != password:
            raise fail("the two passwords entered do not match; nothing was changed")
    try:
        return reps.check_password(password)
    except RepresentativeError as exc:
        raise _refuse(exc) from None


def _existing(db: Database, username: str, data_dir: Path) -> Representative:
    rep = reps.get_by_username(db, username)
    if rep is None:
        raise fail(f"no representative named {username.strip()!r}; see `atlas user list "
                   f"{data_dir}`")
    return rep


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%MZ")


def _as_json(rep: Representative, now: float) -> dict[str, object]:
    return {
        "username": rep.username,
        "display_name": rep.display_name,
        "enabled": rep.enabled,
        "locked_until": rep.locked_until if rep.locked(now) else None,
        "created_at": rep.created_at,
    }


@app.command("create")
def create(
    data_dir: DataDirArg,
    username: Annotated[str, typer.Option(help="What the representative signs in with")],
    display_name: Annotated[str, typer.Option(help="The name customers see")],
    password_stdin: PasswordStdin = False,
) -> None:
    """Create an enabled representative account."""
    try:
        username = reps.check_username(username)
        display_name = reps.check_display_name(display_name)
    except RepresentativeError as exc:
        raise _refuse(exc) from None
    with database(data_dir) as db:
        if reps.get_by_username(db, username) is not None:
            raise fail(f"--username {username!r} is already taken")
        password = _password(password_stdin)
        try:
            rep = reps.create(db, username, display_name, password)
        except RepresentativeError as exc:
            raise _refuse(exc) from None
    out.print(f"Created representative [bold]{rep.username}[/] ({escape(rep.display_name)})",
              highlight=False)


@app.command("list")
def list_cmd(
    data_dir: DataDirArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")] = False,
) -> None:
    """List representatives (passwords are never shown)."""
    now = time.time()
    with database(data_dir) as db:
        accounts = reps.list_all(db)
    if as_json:
        print(json.dumps([_as_json(r, now) for r in accounts]))
        return
    if not accounts:
        out.print("No representatives. Create one with `atlas user create`.")
        return
    table = Table(
        Column("Username", no_wrap=True, min_width=8),
        Column("Display name", overflow="fold", min_width=12),
        Column("Status", no_wrap=True, min_width=8),
        Column("Locked until", no_wrap=True, min_width=12),
        Column("Created", no_wrap=True, min_width=10),
        box=box.SIMPLE_HEAD,
    )
    for r in accounts:
        table.add_row(
            Text(r.username), Text(r.display_name), "enabled" if r.enabled else "disabled",
            _when(r.locked_until) if r.locked(now) else "", _when(r.created_at)[:10],
        )
    out.print(table, highlight=False)


@app.command("set-password")
def set_password(
    data_dir: DataDirArg,
    username: UsernameArg,
    password_stdin: PasswordStdin = False,
) -> None:
    """Give a representative a new password (this also lifts a lock from failed logins)."""
    with database(data_dir) as db:
        rep = _existing(db, username, data_dir)
        password = _password(password_stdin)
        reps.update(db, rep.id, password=password)
    out.print(f"Changed the password of representative [bold]{rep.username}[/]",
              highlight=False)


def _set_enabled(data_dir: DataDirArg, username: str, enabled: bool) -> None:
    word = "enabled" if enabled else "disabled"
    with database(data_dir) as db:
        rep = _existing(db, username, data_dir)
        if rep.enabled == enabled:
            out.print(f"Representative {rep.username} was already {word}", highlight=False,
                      markup=False)
            return
        reps.update(db, rep.id, enabled=enabled)
    out.print(f"Representative [bold]{rep.username}[/] {word}", highlight=False)


@app.command("disable")
def disable(data_dir: DataDirArg, username: UsernameArg) -> None:
    """Disable a representative: they can no longer sign in."""
    _set_enabled(data_dir, username, False)


@app.command("enable")
def enable(data_dir: DataDirArg, username: UsernameArg) -> None:
    """Enable a representative again."""
    _set_enabled(data_dir, username, True)
