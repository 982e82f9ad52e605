"""Asking for a password to log in with: from the environment, else at the terminal."""

from __future__ import annotations

import getpass
import os

from atlas.clients.representative import stdin_is_interactive


class NoPassword(Exception):
    """Neither the environment nor the terminal gave a password; the message says how to."""


def login_password(env_var: str, prompt: str) -> str:
    """``$env_var``, else typed at the terminal (not echoed); :class:`NoPassword` when
    neither gives one (stdin is not a terminal, the prompt was cancelled or left empty)."""
    password = os.environ.get(env_var)
    if password:
        return password
    if not stdin_is_interactive():
        raise NoPassword(f"no password: set ${env_var} (stdin is not a terminal)")
    try:
        password = getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt):
        raise NoPassword("no password given") from None
    if not password:
        raise NoPassword("no password given")
    return password
