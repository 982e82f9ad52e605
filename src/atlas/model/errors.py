"""Validation errors as an operator reads them: which field, what is wrong.

The REST API answers 422 with these entries and the /login forms show each message next
to its field, so both speak the same words.
"""

from __future__ import annotations

from typing import TypedDict

from pydantic import ValidationError


class FieldError(TypedDict):
    """One problem: ``field`` is a dotted path (``traffic_nodes.1.prefixes``; "" for the
    whole document), ``message`` says what is wrong and what is expected."""

    field: str
    message: str


# pydantic's own wording for a few generic cases, in the operator's terms.
_MESSAGES = {
    "missing": "this setting is required",
    "extra_forbidden": "unknown setting: check its spelling against docs/configuration.md",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
}
_PREFIXES = ("Value error, ", "Assertion failed, ")


def describe_errors(exc: ValidationError) -> list[FieldError]:
    """Flatten a ValidationError into ``{"field": …, "message": …}`` entries, in order."""
    described: list[FieldError] = []
    for error in exc.errors(include_url=False):
        message = _MESSAGES.get(error["type"], error["msg"])
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        field = ".".join(str(part) for part in error["loc"])
        described.append({"field": field, "message": message})
    return described
