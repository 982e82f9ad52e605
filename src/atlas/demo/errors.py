"""What goes wrong in ``atlas demo``, each with the exit code the command line uses."""

from __future__ import annotations


class DemoError(Exception):
    """Why the demo cannot start or went wrong; the message is for the operator."""

    exit_code = 1


class UsageProblem(DemoError):
    """A bad option."""

    exit_code = 2


class AlreadyRunning(DemoError):
    """Another ``atlas demo`` runs in this directory."""


class NotRunning(DemoError):
    """No demo runs in the directory a command is about (``atlas demo set-method``)."""

    exit_code = 2


__all__ = ["AlreadyRunning", "DemoError", "NotRunning", "UsageProblem"]
