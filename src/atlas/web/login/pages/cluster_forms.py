"""The forms of /login → Management → Cluster: posted fields ↔ the cluster document.

Pure (no I/O): :mod:`atlas.web.login.pages.cluster` reads the request and the store;
the functions here turn posted fields into document entries, validate the document with
:class:`~atlas.model.config.ClusterConfig`, and put each validation error next to the
field it is about, using the field paths of :func:`~atlas.model.errors.describe_errors`
(``traffic_nodes.2.public.port`` → the Port box of the Public Address row), so the page
and the REST API speak the same words.

Fields follow the guide's forms: Cluster :: Master Node Configuration (Name, Public
Address + Port, Internal Address + Port, the master fallback client limit),
Cluster :: Add Traffic Node (Name, Public/Internal Address + Port, Accepting New Client
Connections, Network Address Prefixes, Timezone Offset; capacity and region are ours),
and the Method for Choosing Traffic Nodes with what each method needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from atlas.model.config import (
    CAPACITY_MAX,
    MASTER_FALLBACK_LIMIT_MAX,
    NAME_MAX_LENGTH,
    Address,
    ClusterConfig,
    SelectionMethod,
    SelectionSettings,
    TrafficNode,
)
from atlas.model.errors import FieldError, describe_errors
from atlas.model.prefixes import PrefixError, parse_prefixes
from atlas.web.rendering import Form

DEFAULT_PORT = 443
DEFAULT_TIMEZONE = "+00:00"
_MAX_NUMBER_DIGITS = 9


@dataclass(frozen=True)
class MethodChoice:
    """One entry of the Method for Choosing Traffic Nodes dropdown (guide p. 9)."""

    value: str
    label: str
    note: str


METHODS: tuple[MethodChoice, ...] = (
    MethodChoice(
        SelectionMethod.RANDOM.value, "Random",
        "Randomly chooses the node to which a client will connect.",
    ),
    MethodChoice(
        SelectionMethod.SRV.value, "SRV Record Lookup",
        "Clients look up an SRV name and pick targets by priority and weight (RFC 2782).",
    ),
    MethodChoice(
        SelectionMethod.A_RECORD.value, "A Record Lookup",
        "Clients connect to a shared hostname; your DNS returns the right traffic node.",
    ),
    MethodChoice(
        SelectionMethod.ANYCAST.value, "IP Anycast",
        "Clients connect to an IP address shared by all traffic nodes; the network "
        "delivers them to the nearest one.",
    ),
    MethodChoice(
        SelectionMethod.TIMEZONE.value, "Timezone Offset",
        "The traffic node whose current UTC offset is closest to the client's.",
    ),
    MethodChoice(
        SelectionMethod.LEAST_LOADED.value, "Least Loaded",
        "The traffic node with the lowest load relative to its capacity (Atlas only).",
    ),
)


def method_label(value: str) -> str:
    return next((m.label for m in METHODS if m.value == value), value)


# --- field path → form field ----------------------------------------------------------

# Where a node's model errors land on the form (paths relative to the node).
NODE_FIELD_PATHS: Mapping[str, str] = {
    "name": "name",
    "public": "public_host",
    "public.host": "public_host",
    "public.port": "public_port",
    "internal": "internal_host",
    "internal.host": "internal_host",
    "internal.port": "internal_port",
    "accepting": "accepting",
    "prefixes": "prefixes",
    "timezone": "timezone",
    "capacity": "capacity",
    "region": "region",
}

MASTER_FIELD_PATHS: Mapping[str, str] = {
    **{f"primary.{k}": v for k, v in NODE_FIELD_PATHS.items()
       if k in ("name", "public", "public.host", "public.port", "internal", "internal.host",
                "internal.port")},
    "site_hostname": "site_hostname",
    "selection.master_fallback_limit": "master_fallback_limit",
}

METHOD_FIELD_PATHS: Mapping[str, str] = {
    f"selection.{name}": name
    for name in ("method", "srv_name", "a_record_hostname", "anycast_address",
                 "anycast_port", "anycast_tls_name")
}


def sentence(message: str) -> str:
    """``"port 0 is out of range"`` → ``"Port 0 is out of range."``"""
    text = message.strip()
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    if text and text[-1] not in ".!?)":
        text += "."
    return text


def place_errors(form: Form, errors: list[FieldError], paths: Mapping[str, str]) -> None:
    """Put each model error next to its form field; others go to the form as a whole."""
    for error in errors:
        target = paths.get(error["field"])
        if target is not None:
            form.error(target, sentence(error["message"]))
        elif error["field"]:
            form.error("", sentence(f"{error['field']}: {error['message']}"))
        else:
            form.error("", sentence(error["message"]))


# --- small field readers --------------------------------------------------------------


def whole_number(
    form: Form, name: str, what: str, *, low: int, high: int, required: bool = True
) -> int | None:
    """The field as an int in ``low..high``; None (and an error) when it is not one."""
    text = form.value(name).strip()
    expected = f"a whole number from {low:,} to {high:,}"
    if not text:
        if required:
            form.error(name, f"Enter {what}: {expected}.")
        return None
    if not (text.isascii() and text.isdecimal()):
        form.error(name, sentence(f"{what} {text[:20]!r} is not a number: expected {expected}"))
        return None
    if len(text) > _MAX_NUMBER_DIGITS or not low <= int(text) <= high:
        form.error(name, sentence(f"{what} {text[:20]} is out of range: expected {expected}"))
        return None
    return int(text)


def port_number(form: Form, name: str) -> int:
    """A port box: digits required; the range is checked by the model (its message)."""
    text = form.value(name).strip()
    if not text:
        form.error(name, "Enter the port clients use for this address (usually 443).")
        return DEFAULT_PORT
    if not (text.isascii() and text.isdecimal()):
        form.error(name, sentence(f"port {text[:20]!r} is not a number: expected 1–65535 "
                                  "(usually 443)"))
        return DEFAULT_PORT
    if len(text) > _MAX_NUMBER_DIGITS:
        form.error(name, "This port is out of range: expected 1–65535 (usually 443).")
        return DEFAULT_PORT
    return int(text)


def address_of(form: Form, prefix: str, *, optional: bool) -> dict[str, Any] | None:
    """``{"host", "port"}`` from the ``<prefix>_host``/``<prefix>_port`` boxes.

    An optional address (Internal Address) left blank is None: "This can be the same as
    the public address" (guide).
    """
    host = form.value(f"{prefix}_host").strip()
    if optional and not host:
        return None
    return {"host": host, "port": port_number(form, f"{prefix}_port")}


def revision_of(form: Form) -> int | None:
    """The hidden ``revision`` field: the document revision the page was drawn from."""
    text = form.value("revision").strip()
    if not (text.isascii() and text.isdecimal()) or len(text) > 18:
        return None
    return int(text)


# --- showing the document in forms ----------------------------------------------------


def _address_values(prefix: str, address: Address | None) -> dict[str, str]:
    if address is None:
        return {f"{prefix}_host": "", f"{prefix}_port": str(DEFAULT_PORT)}
    return {f"{prefix}_host": address.host, f"{prefix}_port": str(address.port)}


def master_values(config: ClusterConfig) -> dict[str, str]:
    primary = config.primary
    return {
        "name": primary.name,
        **_address_values("public", primary.public),
        **_address_values("internal", primary.internal),
        "master_fallback_limit": str(config.selection.master_fallback_limit),
        "revision": str(config.revision),
    }


def new_cluster_values(name: str, public: str, internal: str) -> dict[str, str]:
    """The Create New Cluster form, filled in from the node's own identity."""

    def split(text: str, prefix: str) -> dict[str, str]:
        host, _, port = text.rpartition(":")
        return {f"{prefix}_host": host.strip("[]"), f"{prefix}_port": port}

    values = {
        "site_hostname": "",
        "name": name,
        **split(public, "public"),
        **(split(internal, "internal") if internal != public
           else {"internal_host": "", "internal_port": str(DEFAULT_PORT)}),
        "master_fallback_limit": str(SelectionSettings().master_fallback_limit),
        "revision": "0",
    }
    return values


def node_values(node: TrafficNode | None, revision: int) -> dict[str, str]:
    """The Add/Edit Traffic Node form: a node's values, or the defaults for a new one."""
    if node is None:
        return {
            "name": "", "public_host": "", "public_port": str(DEFAULT_PORT),
            "internal_host": "", "internal_port": str(DEFAULT_PORT), "accepting": "on",
            "prefixes": "", "timezone": DEFAULT_TIMEZONE,
            "capacity": str(TrafficNode.model_fields["capacity"].default), "region": "",
            "revision": str(revision),
        }
    values = {
        "name": node.name,
        **_address_values("public", node.public),
        **_address_values("internal", node.internal),
        "prefixes": "\n".join(node.prefixes),
        "timezone": node.timezone,
        "capacity": str(node.capacity),
        "region": node.region,
        "original_name": node.name,
        "revision": str(revision),
    }
    if node.accepting:
        values["accepting"] = "on"
    return values


def method_values(config: ClusterConfig) -> dict[str, str]:
    s = config.selection
    return {
        "method": s.method.value,
        "srv_name": s.srv_name or "",
        "a_record_hostname": s.a_record_hostname or "",
        "anycast_address": s.anycast_address or "",
        "anycast_port": str(s.anycast_port),
        "anycast_tls_name": s.anycast_tls_name or "",
        "revision": str(config.revision),
    }


# --- Create New Cluster / Update Primary Node -----------------------------------------


@dataclass(frozen=True)
class NewCluster:
    """What Create New Cluster needs (see :func:`atlas.node.cluster.create_cluster`)."""

    site_hostname: str
    name: str
    public: str  # host:port
    internal: str  # host:port (the public address when left blank)
    master_fallback_limit: int


def _same_address(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def key(x: dict[str, Any]) -> tuple[str, Any]:
        return str(x["host"]).strip().lower().removesuffix("."), x["port"]

    return key(a) == key(b)


def _host_port(address: dict[str, Any]) -> str:
    return f"{address['host']}:{address['port']}"


def read_new_cluster(form: Form) -> NewCluster:
    """The Create New Cluster fields; problems the model cannot see go to ``form``."""
    name = form.value("name")
    if not name.strip():
        form.error("name", f"Name must not be empty: expected up to {NAME_MAX_LENGTH} "
                           "printable characters.")
    public = address_of(form, "public", optional=False)
    assert public is not None
    internal = address_of(form, "internal", optional=True)
    if internal is None or _same_address(internal, public):
        internal = public
    limit = whole_number(form, "master_fallback_limit", "the master fallback client limit",
                         low=0, high=MASTER_FALLBACK_LIMIT_MAX)
    return NewCluster(
        site_hostname=form.value("site_hostname"),
        name=name,
        public=_host_port(public),
        internal=_host_port(internal),
        master_fallback_limit=limit if limit is not None else 0,
    )


def _conflicts_with_traffic_nodes(
    form: Form, config: ClusterConfig, name: str, addresses: dict[str, dict[str, Any] | None]
) -> None:
    """Name and addresses of the primary that a traffic node already has.

    The model reports such a clash at the traffic node (it comes later in the document);
    on the master form it belongs next to the master's own field.
    """
    key = name.strip().casefold()
    for node in config.traffic_nodes:
        if key and node.name.casefold() == key:
            form.error("name", f"Name “{name.strip()}” is already used by the traffic node "
                               f"“{node.name}”: expected a name unique among all nodes "
                               "(compared ignoring case).")
    for prefix, raw in addresses.items():
        if raw is None:
            continue
        try:
            address = Address.model_validate(raw)
        except ValidationError:
            continue  # the model names the problem
        for node in config.traffic_nodes:
            if address in (node.public, node.internal):
                form.error(f"{prefix}_host", f"Address {address} is already used by the "
                                             f"traffic node “{node.name}”: expected this "
                                             "node's own canonical hostname and port.")


def updated_primary(form: Form, config: ClusterConfig) -> ClusterConfig | None:
    """Update Primary Node: ``config`` with the posted primary entry and fallback limit,
    validated; None when ``form`` got errors."""
    name = form.value("name")
    public = address_of(form, "public", optional=False)
    internal = address_of(form, "internal", optional=True)
    if internal is not None and public is not None and internal == public:
        internal = None
    limit = whole_number(form, "master_fallback_limit", "the master fallback client limit",
                         low=0, high=MASTER_FALLBACK_LIMIT_MAX)
    _conflicts_with_traffic_nodes(form, config, name, {"public": public, "internal": internal})
    document = config.model_dump(mode="json")
    document["primary"] = {**document["primary"], "name": name, "public": public,
                           "internal": internal}
    if limit is not None:
        document["selection"]["master_fallback_limit"] = limit
    updated = _validated(form, document, MASTER_FIELD_PATHS)
    if updated is None or updated.primary.internal != updated.primary.public:
        return updated
    primary = updated.primary.model_copy(update={"internal": None})
    return updated.model_copy(update={"primary": primary})


# --- Add / Edit Traffic Node ----------------------------------------------------------


def read_node(form: Form) -> dict[str, Any]:
    """The posted traffic node as a document entry (the model validates it)."""
    capacity = whole_number(form, "capacity", "the capacity", low=1, high=CAPACITY_MAX)
    default_capacity: int = TrafficNode.model_fields["capacity"].default
    return {
        "name": form.value("name"),
        "public": address_of(form, "public", optional=False),
        "internal": address_of(form, "internal", optional=True),
        "accepting": form.value("accepting") == "on",
        "prefixes": form.value("prefixes"),
        "timezone": form.value("timezone"),
        "capacity": capacity if capacity is not None else default_capacity,
        "region": form.value("region"),
    }


def prefix_notices(form: Form) -> list[str]:
    """What was normalised in the Network Address Prefixes box (host bits, repeats)."""
    try:
        return parse_prefixes(form.value("prefixes")).notices
    except PrefixError:
        return []


def with_node(
    form: Form, config: ClusterConfig, entry: dict[str, Any], replaces: int | None
) -> ClusterConfig | None:
    """``config`` with ``entry`` added (``replaces`` None) or in place of traffic node
    ``replaces``; validated. None when ``form`` got errors.

    Validation runs with the posted node last, so a clash with another node (name,
    address) is reported at the posted node, next to the field the operator is editing.
    """
    document = config.model_dump(mode="json")
    nodes: list[dict[str, Any]] = document["traffic_nodes"]
    if replaces is not None:
        entry = {**nodes[replaces], **entry}  # keeps what the form does not show (GUID)
        others = nodes[:replaces] + nodes[replaces + 1:]
    else:
        others = list(nodes)
    last = len(others)
    paths = {f"traffic_nodes.{last}.{k}": v for k, v in NODE_FIELD_PATHS.items()}
    if _validated(form, {**document, "traffic_nodes": [*others, entry]}, paths) is None:
        return None
    if replaces is not None:
        nodes[replaces] = entry
    else:
        nodes.append(entry)
    updated = _validated(form, document, {})
    if updated is None:
        return None
    index = replaces if replaces is not None else len(nodes) - 1
    node = updated.traffic_nodes[index]
    if node.internal is None or node.internal != node.public:
        return updated
    same = node.model_copy(update={"internal": None})  # "the same as the public address"
    traffic = (*updated.traffic_nodes[:index], same, *updated.traffic_nodes[index + 1:])
    return updated.model_copy(update={"traffic_nodes": traffic})


def without_node(config: ClusterConfig, index: int) -> ClusterConfig:
    nodes = config.traffic_nodes[:index] + config.traffic_nodes[index + 1:]
    return config.model_copy(update={"traffic_nodes": nodes})


def find_traffic_node(config: ClusterConfig, name: str) -> int | None:
    """Index of the traffic node called exactly ``name`` (else ignoring case)."""
    for i, node in enumerate(config.traffic_nodes):
        if node.name == name:
            return i
    found = config.node_by_name(name)
    if isinstance(found, TrafficNode):
        return config.traffic_nodes.index(found)
    return None


# --- Method for Choosing Traffic Nodes ------------------------------------------------


def with_method(form: Form, config: ClusterConfig) -> ClusterConfig | None:
    """``config`` with the posted selection method and its settings; validated."""
    method = form.value("method")
    if method not in {m.value for m in METHODS}:
        form.error("method", "Choose one of: " + ", ".join(m.label for m in METHODS) + ".")
    port_text = form.value("anycast_port").strip()
    anycast_port = port_number(form, "anycast_port") if port_text else DEFAULT_PORT
    document = config.model_dump(mode="json")
    document["selection"] = {
        **document["selection"],
        "method": method if not form.errors.get("method") else config.selection.method.value,
        "srv_name": form.value("srv_name"),
        "a_record_hostname": form.value("a_record_hostname"),
        "anycast_address": form.value("anycast_address"),
        "anycast_port": anycast_port,
        "anycast_tls_name": form.value("anycast_tls_name"),
    }
    return _validated(form, document, METHOD_FIELD_PATHS)


# --- validation -----------------------------------------------------------------------


def _validated(
    form: Form, document: dict[str, Any], paths: Mapping[str, str]
) -> ClusterConfig | None:
    try:
        config = ClusterConfig.model_validate(document)
    except ValidationError as exc:
        place_errors(form, describe_errors(exc), paths)
        return None
    return config if form.ok else None


def describe_validation(exc: ValidationError, form: Form, paths: Mapping[str, str]) -> None:
    """Errors raised elsewhere (Create New Cluster) placed like :func:`_validated`'s."""
    place_errors(form, describe_errors(exc), paths)


__all__ = [
    "MASTER_FIELD_PATHS",
    "METHODS",
    "METHOD_FIELD_PATHS",
    "NODE_FIELD_PATHS",
    "MethodChoice",
    "NewCluster",
    "describe_validation",
    "find_traffic_node",
    "master_values",
    "method_label",
    "method_values",
    "new_cluster_values",
    "node_values",
    "place_errors",
    "prefix_notices",
    "read_new_cluster",
    "read_node",
    "revision_of",
    "sentence",
    "updated_primary",
    "whole_number",
    "with_method",
    "with_node",
    "without_node",
]
