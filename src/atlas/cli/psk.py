"""``atlas psk``: the Inter-appliance Communication Pre-shared Key of a node, from a shell.

The same key as /login → Management → Security (guide: "This password must match among
all nodes"), for setting up nodes by script. The key comes from ``--stdin`` (its first
line), else ``$ATLAS_PSK``, else a prompt asked twice; never from an option, which other
users could read in ``ps``. A running node takes the new key at once. The key is never
printed; ``status`` says whether one is set and when it changed.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from typing import Annotated

import typer

from atlas.cli.node import DataDirArg, fail, node_database, out
from atlas.node.datadir import DataDir
from atlas.node.psk import psk_changed_at, psk_is_set, psk_problem, save_psk

ENV_PSK = "ATLAS_PSK"

app = typer.Typer(no_args_is_help=True,
                  help="The Inter-appliance Communication Pre-shared Key of a node.")


def _read(from_stdin: bool) -> str:
    if from_stdin:
        return typer.get_text_stream("stdin").readline().removesuffix("\n").removesuffix("\r")
    if os.environ.get(ENV_PSK):
        return os.environ[ENV_PSK]
    if not sys.stdin.isatty():
        raise fail(f"no pre-shared key: use --stdin or ${ENV_PSK} (stdin is not a terminal)")
    try:
        psk = typer.prompt("Pre-shared key", hide_input=True)
        again = typer.prompt("Repeat the pre-shared key", hide_input=True)
    except typer.Abort:
        raise fail("no pre-shared key given") from None
    if again != psk:
        raise fail("the two keys entered do not match; nothing was changed")
    return str(psk)


@app.command("set")
def set_cmd(
    data_dir: DataDirArg,
    stdin: Annotated[bool, typer.Option(
        "--stdin", help="Read the key from the first line of stdin")] = False,
) -> None:
    """Set the pre-shared key (the same on every node of the cluster)."""
    psk = _read(stdin)
    if problem := psk_problem(psk):
        raise fail(problem)
    with node_database(data_dir) as db:
        save_psk(DataDir(data_dir), db, psk, time.time(), by="atlas psk set")
    out.print(f"The pre-shared key of {data_dir} is set. Set the same key on every node.",
              highlight=False)


@app.command("status")
def status_cmd(data_dir: DataDirArg) -> None:
    """Whether a pre-shared key is set, and when it was changed (never the key)."""
    with node_database(data_dir) as db:
        if not psk_is_set(DataDir(data_dir)):
            out.print("No pre-shared key is set: this node cannot join a cluster yet.")
            raise typer.Exit(1)
        changed = psk_changed_at(db)
    when = (dt.datetime.fromtimestamp(changed, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if changed is not None else "at an unknown time")
    out.print(f"A pre-shared key is set (changed {when}).", highlight=False)
