"""The cluster configuration document: everything an operator sets in /login.

One versioned document (design section 4): site settings, selection settings, every node.
The master stores it with a revision that increases on every change and pushes it whole
to every traffic node on Sync Now.

Field names follow the guide's words (Name, Public Address, Internal Address, Accepting
New Client Connections, Network Address Prefixes, Timezone Offset, Method for Choosing
Traffic Nodes, master fallback client limit).

Validation follows the guide and says what is wrong and what is expected; every error
raised here is a :class:`pydantic.ValidationError` whose locations name the field
(``traffic_nodes.1.prefixes``), see :func:`atlas.model.errors.describe_errors`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import tomllib
import unicodedata
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from atlas.model.prefixes import PrefixError, parse_prefixes
from atlas.model.timezones import TimezoneError, normalise_timezone

NAME_MAX_LENGTH = 64
HOSTNAME_MAX_LENGTH = 253
MASTER_FALLBACK_LIMIT_MAX = 1_000_000
CAPACITY_MAX = 1_000_000

IP_NOT_SUPPORTED = (
    "IP addresses are not supported for cluster nodes: use the node's canonical hostname, "
    "which certificates and DNS need"
)
NOT_SITE_HOSTNAME = "must be the node's own canonical hostname, not the support site hostname"

_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")  # SRV owner names
_GUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
# Unicode categories refused in names: control, format, surrogate, private use,
# unassigned, line and paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _fail(kind: str, message: str) -> PydanticCustomError:
    """An error with a clean message (no "Value error," prefix); no template context is
    passed, so braces in quoted operator input are shown as typed."""
    return PydanticCustomError(kind, message)


# --- hostnames ------------------------------------------------------------------------


def _is_ip_literal(text: str) -> bool:
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def normalise_hostname(
    value: str,
    *,
    ip_message: str = IP_NOT_SUPPORTED,
    example: str = "master1.support.example.com",
    underscores: bool = False,
) -> str:
    """An RFC 1123 hostname, lowercased, without a trailing dot.

    Refuses IP literals with ``ip_message`` (guide, "Configure the Primary Master Node":
    Atlas clusters use hostnames, not IP addresses). ``underscores`` allows the ``_service``
    labels of SRV owner names (RFC 2782). Raises PydanticCustomError.
    """
    host = value.strip()
    expected = f"expected a hostname such as {example}"
    if not host:
        raise _fail("hostname_empty", f"hostname must not be empty: {expected}")
    if "://" in host or "/" in host:
        raise _fail(
            "hostname_invalid",
            f"{host!r} is not a hostname: {expected}, without https:// or a path",
        )
    if _is_ip_literal(host):
        raise _fail("hostname_is_ip", ip_message)
    if ":" in host:
        raise _fail("hostname_invalid", f"{host!r} is not a hostname: {expected}, without a port")
    if not host.isascii():
        raise _fail(
            "hostname_invalid",
            f"{host!r} contains non-ASCII characters: write internationalised names "
            "in their ASCII form (xn--…)",
        )
    host = host.lower().removesuffix(".")
    if len(host) > HOSTNAME_MAX_LENGTH:
        raise _fail(
            "hostname_too_long",
            f"hostname is {len(host)} characters long: expected at most {HOSTNAME_MAX_LENGTH}",
        )
    label_pattern = _DNS_LABEL if underscores else _HOST_LABEL
    allowed = (
        "letters, digits, hyphens and underscores"
        if underscores
        else ("letters, digits and hyphens")
    )
    for label in host.split("."):
        if not label:
            raise _fail(
                "hostname_invalid",
                f"{host!r} has an empty label (a leading dot or two dots in a row): {expected}",
            )
        if len(label) > 63:
            raise _fail(
                "hostname_invalid",
                f"label {label[:20]!r}… of {host!r} is {len(label)} characters long: "
                "expected at most 63 between dots",
            )
        if not label_pattern.fullmatch(label):
            raise _fail(
                "hostname_invalid",
                f"label {label!r} of {host!r} is not valid: use only {allowed}, "
                "not starting or ending with a hyphen",
            )
    if host.rsplit(".", 1)[-1].isdigit():
        raise _fail("hostname_is_ip", ip_message)  # "10.1.2", "1234": read as IPs by resolvers
    return host


def _hostname(ip_message: str, example: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        return normalise_hostname(value, ip_message=ip_message, example=example)

    return check


def _srv_name(value: str) -> str:
    return normalise_hostname(
        value,
        ip_message="an SRV name is a DNS name such as _atlas._tcp.support.example.com, "
        "not an IP address",
        example="_atlas._tcp.support.example.com",
        underscores=True,
    )


def _anycast_address(value: str) -> str:
    text = value.strip()
    try:
        address = ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise _fail(
            "anycast_address_invalid",
            f"{text!r} is not an IP address: IP Anycast hands clients the shared IP address "
            "of all traffic nodes, e.g. 192.0.2.10 or 2001:db8::10",
        ) from None
    if address.is_unspecified or address.is_multicast:
        raise _fail(
            "anycast_address_invalid",
            f"{address} cannot be an anycast address: expected a unicast IP address "
            "shared by the traffic nodes",
        )
    return str(address)


# --- free text ------------------------------------------------------------------------


def _printable_text(value: str, *, what: str, max_length: int, required: bool) -> str:
    text = unicodedata.normalize("NFC", value.strip())
    if required and not text:
        raise _fail(
            f"{what}_empty",
            f"{what} must not be empty: expected up to {max_length} printable characters",
        )
    for position, char in enumerate(text, start=1):
        if unicodedata.category(char) in _UNPRINTABLE:
            raise _fail(
                f"{what}_unprintable",
                f"{what} contains the unprintable character U+{ord(char):04X} at position "
                f"{position}: use printable characters only",
            )
    if len(text) > max_length:
        raise _fail(
            f"{what}_too_long",
            f"{what} is {len(text)} characters long: expected at most {max_length}",
        )
    return text


def _node_name(value: str) -> str:
    """Guide: "Enter a name that you will use to remember this node in the cluster."
    Shown in HTML later: markup is kept as typed and escaped by the web layer."""
    return _printable_text(value, what="name", max_length=NAME_MAX_LENGTH, required=True)


def _region(value: str) -> str:
    return _printable_text(value, what="region", max_length=NAME_MAX_LENGTH, required=False)


def _guid(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if not _GUID.fullmatch(text):
        raise _fail(
            "guid_invalid",
            f"{text[:70]!r} is not an appliance GUID: expected up to 64 letters, digits and "
            "hyphens (the node reports its GUID at its first sync; leave it empty)",
        )
    return text


def _blank_to_none(value: Any) -> Any:
    """Web forms send "" for an empty optional field."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise _fail(
            "port_out_of_range",
            f"port {value} is out of range: expected 1–65535 (usually 443)",
        )
    return value


def _name_key(name: str) -> str:
    """Names are unique ignoring case: "Tokyo" and "tokyo" would confuse an operator."""
    return name.casefold()


NodeName = Annotated[str, AfterValidator(_node_name)]
NodeHostname = Annotated[
    str, AfterValidator(_hostname(IP_NOT_SUPPORTED, "master1.support.example.com"))
]
SiteHostname = Annotated[
    str,
    AfterValidator(
        _hostname(
            "the support site hostname must be a hostname, not an IP address: "
            "certificates and DNS need it",
            "support.example.com",
        )
    ),
]
SharedHostname = Annotated[
    str,
    AfterValidator(
        _hostname(
            "must be a hostname, not an IP address: to hand clients an IP address "
            "use the anycast method",
            "traffic.support.example.com",
        )
    ),
]
Port = Annotated[int, AfterValidator(_port)]
Guid = Annotated[str | None, BeforeValidator(_blank_to_none), AfterValidator(_guid)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SelectionMethod(StrEnum):
    """Method for Choosing Traffic Nodes (guide p. 9) plus ``least_loaded`` (ours)."""

    RANDOM = "random"
    SRV = "srv"
    A_RECORD = "a_record"
    ANYCAST = "anycast"
    TIMEZONE = "timezone"
    LEAST_LOADED = "least_loaded"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(_Model):
    """A node address: canonical hostname and TCP port (guide: "Public Address").

    Accepts ``"host:port"`` (or ``"host"``, port 443) wherever an Address is expected.
    """

    host: NodeHostname
    port: Port = 443

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Address:
        """``"master1.support.example.com:443"`` → Address. Raises ValidationError."""
        return cls.model_validate(text)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            return _split_host_port(data)
        return data


def _split_host_port(text: str) -> dict[str, Any]:
    """``host:port`` → parts; ``[v6]:port`` and bare IPv6 are split too, so the host check
    can refuse them with the guide's reason rather than a confusing port error."""
    entry = text.strip()
    if "://" in entry:
        raise _fail(
            "address_invalid",
            f"{entry!r} is not an address: expected host:port such as "
            "master1.support.example.com:443, without https://",
        )
    if entry.startswith("[") and "]" in entry:
        end = entry.index("]")
        host, rest = entry[: end + 1], entry[end + 1 :]
        if not rest:
            return {"host": host}
        if not rest.startswith(":"):
            raise _fail("address_invalid", f"{entry!r} is not an address: expected host:port")
        port_text = rest[1:]
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
    else:
        return {"host": entry}
    port_text = port_text.strip()
    if not (port_text.isascii() and port_text.isdecimal()):
        raise _fail(
            "port_invalid",
            f"port {port_text!r} in {entry!r} is not a number: expected host:port with a "
            "port 1–65535, e.g. master1.support.example.com:443",
        )
    return {"host": host, "port": int(port_text)}


class _Node(_Model):
    """Fields shared by every node (guide: Name, Public Address, Internal Address)."""

    name: NodeName
    guid: Guid = None
    public: Address
    internal: Address | None = None  # None: same as public

    def internal_address(self) -> Address:
        """Where other nodes reach this one (guide: "This can be the same as the public
        address")."""
        return self.internal if self.internal is not None else self.public


class MasterNode(_Node):
    """The primary (or backup) master node (guide: Cluster :: Master Node Configuration)."""


class TrafficNode(_Node):
    """One traffic node (guide: Cluster :: Add Traffic Node)."""

    accepting: bool = True
    prefixes: tuple[str, ...] = ()  # normalised CIDR strings, e.g. "10.20.0.0/16"
    timezone: str = "+00:00"  # "+09:00" or an IANA zone name such as "Asia/Tokyo"
    capacity: int = Field(default=1000, ge=1, le=CAPACITY_MAX)  # for least_loaded (ours)
    region: Annotated[str, AfterValidator(_region)] = ""  # free text, shown in tables

    @field_validator("prefixes", mode="before")
    @classmethod
    def _parse_prefixes(cls, value: Any) -> tuple[str, ...]:
        """Guide: "one per line, in the form of ip.add.re.ss[/netmask]"."""
        if value is None:
            return ()
        lines_ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        if not (isinstance(value, str) or lines_ok):
            raise _fail(
                "prefixes_type",
                "network address prefixes must be text with one prefix per line, "
                'or a list of strings such as ["10.20.0.0/16"]',
            )
        try:
            return parse_prefixes(value).prefixes
        except PrefixError as exc:
            raise _fail("prefixes_invalid", str(exc)) from None

    @field_validator("timezone", mode="after")
    @classmethod
    def _normalise_timezone(cls, value: str) -> str:
        try:
            return normalise_timezone(value)
        except TimezoneError as exc:
            raise _fail("timezone_invalid", str(exc)) from None


class SelectionSettings(_Model):
    """Method for Choosing Traffic Nodes and what each method needs (guide p. 9)."""

    method: SelectionMethod = SelectionMethod.RANDOM
    srv_name: Annotated[str | None, BeforeValidator(_blank_to_none)] = None
    a_record_hostname: Annotated[SharedHostname | None, BeforeValidator(_blank_to_none)] = None
    anycast_address: Annotated[str | None, BeforeValidator(_blank_to_none)] = None
    anycast_port: Port = 443
    anycast_tls_name: Annotated[SharedHostname | None, BeforeValidator(_blank_to_none)] = None
    master_fallback_limit: int = Field(default=50, ge=0, le=MASTER_FALLBACK_LIMIT_MAX)

    @field_validator("srv_name", mode="after")
    @classmethod
    def _check_srv_name(cls, value: str | None) -> str | None:
        return None if value is None else _srv_name(value)

    @field_validator("anycast_address", mode="after")
    @classmethod
    def _check_anycast_address(cls, value: str | None) -> str | None:
        return None if value is None else _anycast_address(value)

    @model_validator(mode="after")
    def _method_has_its_settings(self) -> Self:
        """A method that needs a setting cannot be chosen without it."""
        needs = {
            SelectionMethod.SRV: (
                "srv_name",
                "the SRV name clients look up, e.g. _atlas._tcp.support.example.com",
            ),
            SelectionMethod.A_RECORD: (
                "a_record_hostname",
                "the shared hostname clients resolve, e.g. traffic.support.example.com",
            ),
            SelectionMethod.ANYCAST: (
                "anycast_address",
                "the IP address shared by all traffic nodes, e.g. 192.0.2.10",
            ),
        }
        if self.method in needs:
            field, what = needs[self.method]
            if getattr(self, field) is None:
                _raise(
                    type(self),
                    [
                        _error(
                            (field,),
                            "method_needs_setting",
                            f"required when the method is '{self.method}': {what}",
                            None,
                        )
                    ],
                )
        return self


class HealthSettings(_Model):
    """How often the master health-checks each traffic node (design section 4)."""

    interval_seconds: Seconds = 5.0
    timeout_seconds: Seconds = 15.0

    @model_validator(mode="after")
    def _timeout_covers_interval(self) -> Self:
        if self.timeout_seconds < self.interval_seconds:
            _raise(
                type(self),
                [
                    _error(
                        ("timeout_seconds",),
                        "timeout_below_interval",
                        f"health timeout {self.timeout_seconds:g} s is shorter than the "
                        f"check interval {self.interval_seconds:g} s: expected at least the "
                        "interval (a node is offline when no check succeeded within it)",
                        self.timeout_seconds,
                    )
                ],
            )
        return self


AnyNode = MasterNode | TrafficNode


class ClusterConfig(_Model):
    """The whole document. ``revision`` is assigned by the store, never by an editor."""

    revision: int = Field(default=0, ge=0)
    site_hostname: SiteHostname
    primary: MasterNode
    backup: MasterNode | None = None
    traffic_nodes: tuple[TrafficNode, ...] = ()
    selection: SelectionSettings = SelectionSettings()
    health: HealthSettings = HealthSettings()

    @classmethod
    def from_toml(cls, text: str) -> ClusterConfig:
        """A cluster TOML file (docs/configuration.md) → validated ClusterConfig.

        Raises tomllib.TOMLDecodeError for bad TOML and ValidationError for bad settings.
        """
        return cls.model_validate(tomllib.loads(text))

    def all_nodes(self) -> tuple[AnyNode, ...]:
        """Primary, backup (if any), then traffic nodes in configured order."""
        masters: tuple[MasterNode, ...] = (self.primary,) + (
            (self.backup,) if self.backup is not None else ()
        )
        return masters + self.traffic_nodes

    def node_by_name(self, name: str) -> AnyNode | None:
        """The node with this name (ignoring case and surrounding spaces, as uniqueness
        does), or None."""
        key = _name_key(unicodedata.normalize("NFC", name.strip()))
        return next((n for n in self.all_nodes() if _name_key(n.name) == key), None)

    def node_by_guid(self, guid: str) -> AnyNode | None:
        """The node with this appliance GUID, or None."""
        return next((n for n in self.all_nodes() if n.guid == guid), None)

    def canonical_json(self) -> str:
        """The document as compact JSON with sorted keys: equal documents, equal text."""
        return json.dumps(
            self.model_dump(mode="json"),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )

    def digest(self) -> str:
        """SHA-256 hex of :meth:`canonical_json` (revision included)."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def _labelled_nodes(self) -> list[tuple[tuple[str | int, ...], str, AnyNode]]:
        labelled: list[tuple[tuple[str | int, ...], str, AnyNode]] = [
            (("primary",), "primary master node", self.primary)
        ]
        if self.backup is not None:
            labelled.append((("backup",), "backup master node", self.backup))
        labelled += [
            (("traffic_nodes", i), "traffic node", node)
            for i, node in enumerate(self.traffic_nodes)
        ]
        return labelled

    @model_validator(mode="after")
    def _check_across_nodes(self) -> Self:
        """Rules that span nodes (guide, "Configure the Primary Master Node" and
        "Configure the Traffic Nodes"): unique names, own hostnames, unique addresses."""
        errors: list[InitErrorDetails] = []
        names: dict[str, str] = {}
        guids: dict[str, str] = {}
        addresses: dict[Address, str] = {}
        for loc, role, node in self._labelled_nodes():
            label = f"{role} {node.name!r}"
            key = _name_key(node.name)
            if key in names:
                errors.append(
                    _error(
                        (*loc, "name"),
                        "name_not_unique",
                        f"name {node.name!r} is already used by the {names[key]}: "
                        "expected a name unique among all nodes (compared ignoring case)",
                        node.name,
                    )
                )
            else:
                names[key] = label
            if node.guid is not None:
                if node.guid in guids:
                    errors.append(
                        _error(
                            (*loc, "guid"),
                            "guid_not_unique",
                            f"GUID {node.guid} is already that of the {guids[node.guid]}: "
                            "the same appliance cannot be two nodes",
                            node.guid,
                        )
                    )
                else:
                    guids[node.guid] = label
            seen_here: set[Address] = set()
            for field, address in (("public", node.public), ("internal", node.internal)):
                if address is None or address in seen_here:
                    continue
                seen_here.add(address)
                if address.host == self.site_hostname:
                    errors.append(
                        _error(
                            (*loc, field),
                            "address_is_site_hostname",
                            f"{address.host!r} is the support site hostname: a node address "
                            f"{NOT_SITE_HOSTNAME} (e.g. master1.{self.site_hostname})",
                            str(address),
                        )
                    )
                elif address in addresses:
                    errors.append(
                        _error(
                            (*loc, field),
                            "address_not_unique",
                            f"address {address} is already used by the {addresses[address]}: "
                            "expected this node's own canonical hostname and port",
                            str(address),
                        )
                    )
                else:
                    addresses[address] = label
        selection = self.selection
        if selection.a_record_hostname == self.site_hostname:
            errors.append(
                _error(
                    ("selection", "a_record_hostname"),
                    "a_record_is_site_hostname",
                    f"{self.site_hostname!r} is the support site hostname, which routes to the "
                    "primary master: expected a shared name for the traffic nodes, e.g. "
                    f"traffic.{self.site_hostname}",
                    selection.a_record_hostname,
                )
            )
        if errors:
            _raise(type(self), errors)
        if selection.method is SelectionMethod.ANYCAST and selection.anycast_tls_name is None:
            # Frozen model: fill in the documented default once, while validating.
            object.__setattr__(
                self,
                "selection",
                selection.model_copy(update={"anycast_tls_name": self.site_hostname}),
            )
        return self


def _error(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> InitErrorDetails:
    return {"type": _fail(kind, message), "loc": loc, "input": value}


def _raise(model: type[BaseModel], errors: list[InitErrorDetails]) -> None:
    """Raise errors located at the offending fields (pydantic prefixes outer locations)."""
    raise ValidationError.from_exception_data(model.__name__, errors)


__all__ = [
    "IP_NOT_SUPPORTED",
    "NOT_SITE_HOSTNAME",
    "Address",
    "AnyNode",
    "ClusterConfig",
    "HealthSettings",
    "MasterNode",
    "SelectionMethod",
    "SelectionSettings",
    "TrafficNode",
    "normalise_hostname",
]
