"""Why a client gave up, in one line a person can act on, and the exit code for scripts.

Errors say whose fault they are (CONVENTIONS.md): the site refused us (a bad, expired or
used session key, a wrong password, too many tries, no traffic node free), the site
could not be reached or its certificate not trusted (our network or our ``--ca-file``),
or the peer broke the protocol. Each is a :class:`ClientFailure` with a stable
``code`` (also the ``error`` field of the ``--json`` ``failed`` event) and an exit code:

==  ===========================================================================
0   done (the session ran and ended, or ``--duration``/``--frames`` was reached)
1   the session failed (ended by a traffic node going offline and not restarted,
    a protocol error, a stream that could not be connected)
2   usage: a bad option
3   refused credentials: bad, expired or used session key; wrong password
5   the site is unreachable, or its certificate is not trusted
6   try again later: rate-limited, no traffic node available, server busy
==  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from atlas.protocol.control import Error, ErrorCode

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_REFUSED: Final = 3
EXIT_UNREACHABLE: Final = 5
EXIT_RETRY_LATER: Final = 6


class ClientFailure(Exception):
    """The client cannot go on. ``str()`` is the one line to print."""

    exit_code: int = EXIT_FAILED

    def __init__(self, code: str, message: str, *, retry_after_seconds: int | None = None,
                 exit_code: int | None = None) -> None:
        super().__init__(" ".join(message.split()))  # one line, always
        self.code = code
        self.retry_after_seconds = retry_after_seconds
        if exit_code is not None:
            self.exit_code = exit_code


class SiteUnreachable(ClientFailure):
    """No TLS connection to the site (refused, no route, DNS, timeout)."""

    exit_code = EXIT_UNREACHABLE


class CertificateNotTrusted(SiteUnreachable):
    """The site's certificate does not verify against the trusted CAs."""

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(
            "certificate_not_trusted",
            f"certificate not trusted: pass --ca-file (the site's CA certificate) — "
            f"{host}: {detail}",
        )


class SiteRefused(ClientFailure):
    """The master answered with an ``error`` that ends our attempt."""

    def __init__(self, error: Error, context: str = "") -> None:
        rule = REFUSALS.get(error.code, _DEFAULT_REFUSAL)
        message = f"{rule.label}: {error.message.rstrip('.')}"
        if rule.hint and rule.hint.lower() not in message.lower():
            message += f" — {rule.hint}"
        if (error.retry_after_seconds is not None and rule.exit_code == EXIT_RETRY_LATER
                and "retry in" not in message.lower()):
            message += f" (retry in {error.retry_after_seconds} s)"
        if context:
            message = f"{context}: {message}"
        super().__init__(error.code.value, message,
                         retry_after_seconds=error.retry_after_seconds,
                         exit_code=rule.exit_code)
        self.error = error


class ProtocolFailure(ClientFailure):
    """The master sent something the control protocol does not allow (its fault)."""

    def __init__(self, message: str) -> None:
        super().__init__("protocol_error", message)


class SessionFailed(ClientFailure):
    """The session could not go on (a stream connection refused or lost for good)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """How one ``error`` code reads and exits."""

    label: str
    exit_code: int
    hint: str = ""  # added unless the master's message already says it


REFUSALS: Final[Mapping[ErrorCode, Refusal]] = {
    ErrorCode.KEY_INVALID: Refusal("bad key", EXIT_REFUSED),
    ErrorCode.KEY_EXPIRED: Refusal("expired key", EXIT_REFUSED),
    ErrorCode.KEY_USED: Refusal("used key", EXIT_REFUSED),
    ErrorCode.AUTH_FAILED: Refusal("wrong password", EXIT_REFUSED,
                                   "check --user and $ATLAS_PASSWORD"),
    ErrorCode.RATE_LIMITED: Refusal("rate-limited", EXIT_RETRY_LATER),
    ErrorCode.NO_TRAFFIC_NODE: Refusal("no traffic node available", EXIT_RETRY_LATER),
    ErrorCode.SERVER_BUSY: Refusal("site busy", EXIT_RETRY_LATER),
    ErrorCode.VERSION_MISMATCH: Refusal("software version mismatch", EXIT_FAILED,
                                        "use the client of the site's software version"),
    ErrorCode.QUEUE_EMPTY: Refusal("queue empty", EXIT_FAILED),
    ErrorCode.SESSION_NOT_FOUND: Refusal("session not found", EXIT_FAILED),
    ErrorCode.NOT_ALLOWED: Refusal("not allowed", EXIT_FAILED),
    ErrorCode.GRANT_REVOKED: Refusal("stream taken back", EXIT_FAILED),
    ErrorCode.STREAM_NOT_GRANTED: Refusal("stream not granted", EXIT_FAILED),
    ErrorCode.BAD_REQUEST: Refusal("bad request", EXIT_USAGE),
    ErrorCode.INTERNAL_ERROR: Refusal("site error", EXIT_FAILED),
}
_DEFAULT_REFUSAL: Final = Refusal("refused", EXIT_FAILED)
