"""describe_errors: the {field, message} list shown by the REST API (422) and forms."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from atlas.model.config import Address, ClusterConfig
from atlas.model.errors import describe_errors
from tests.model.documents import cluster, traffic


def test_fields_are_dotted_paths_and_messages_are_clean() -> None:
    document = traffic(prefixes="10.0.0.0/8\n10.1.2.3/255.0.255.0", name="")
    with pytest.raises(ValidationError) as caught:
        ClusterConfig.model_validate(document)
    assert describe_errors(caught.value) == [
        {
            "field": "traffic_nodes.0.name",
            "message": "name must not be empty: expected up to 64 printable characters",
        },
        {
            "field": "traffic_nodes.0.prefixes",
            "message": "line 2: '10.1.2.3/255.0.255.0': netmask 255.0.255.0 is not contiguous: "
            "its 1-bits must all come first, as in 255.255.240.0",
        },
    ]


def test_cross_field_errors_point_at_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        ClusterConfig.model_validate(cluster(selection={"method": "anycast"}))
    [error] = describe_errors(caught.value)
    assert error["field"] == "selection.anycast_address"
    assert not error["message"].startswith("Value error")


def test_generic_messages_are_reworded() -> None:
    with pytest.raises(ValidationError) as caught:
        ClusterConfig.model_validate({"site_hostname": "support.example.com", "extra": 1})
    assert describe_errors(caught.value) == [
        {"field": "primary", "message": "this setting is required"},
        {
            "field": "extra",
            "message": "unknown setting: check its spelling against docs/configuration.md",
        },
    ]


def test_braces_in_operator_input_are_shown_as_typed() -> None:
    with pytest.raises(ValidationError) as caught:
        Address.parse("{host}.example.com:443")
    [error] = describe_errors(caught.value)
    assert "'{host}'" in error["message"]
    assert error["field"] == "host"
