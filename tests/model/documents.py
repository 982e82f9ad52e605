"""Shared builders for configuration-model tests."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from atlas.model.config import ClusterConfig
from atlas.model.errors import FieldError, describe_errors

SITE = "support.example.com"


def cluster(**overrides: Any) -> dict[str, Any]:
    """A valid cluster document (the guide's example) as plain data, with overrides."""
    document: dict[str, Any] = {
        "site_hostname": SITE,
        "primary": {"name": "master1", "public": "master1.support.example.com:443"},
        "backup": {"name": "master2", "public": "master2.support.example.com:443"},
        "traffic_nodes": [
            {"name": "us-traffic1", "public": "us-traffic1.support.example.com:443"},
            {"name": "us-traffic2", "public": "us-traffic2.support.example.com:443"},
            {"name": "asia-traffic1", "public": "asia-traffic1.support.example.com:443"},
        ],
    }
    document.update(overrides)
    return document


def traffic(**fields: Any) -> dict[str, Any]:
    """A cluster document whose first traffic node has ``fields`` set."""
    document = cluster()
    document["traffic_nodes"][0] = {**document["traffic_nodes"][0], **fields}
    return document


def errors_of(document: dict[str, Any]) -> list[FieldError]:
    with pytest.raises(ValidationError) as caught:
        ClusterConfig.model_validate(document)
    return describe_errors(caught.value)


def assert_refused(document: dict[str, Any], field: str, *fragments: str) -> None:
    """The document is refused with an error on ``field`` whose message has ``fragments``."""
    errors = errors_of(document)
    on_field = [e["message"] for e in errors if e["field"] == field]
    assert on_field, f"no error on {field!r}: {errors}"
    message = on_field[0]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
