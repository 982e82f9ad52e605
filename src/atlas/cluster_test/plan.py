"""The cluster test plan: a TOML file of probe clients (``atlas cluster test PLAN``).

Example (``atlas demo`` writes one for its own cluster, ``DIR/cluster-test.toml``)::

    url = "https://support.example.test:8443"   # the site (else --url / ATLAS_URL)
    dns = "127.0.53.53:10053"                   # DNS server for every lookup (optional)
    ca_file = "/path/to/ca.pem"                 # CA to trust (optional)
    representative = "test-rep"                 # the test representative's username

    [[probe]]
    name = "asia-customer"
    kind = "support_customer"                   # or "representative"
    source_address = "127.20.0.5"               # connect from here (an address of this host)
    tz_offset = "Asia/Tokyo"                    # report this UTC offset (±HH:MM or a zone)
    expected_nodes = ["asia-traffic1", "asia-traffic2"]   # optional: else the route's answer
    expected_rule = "prefix"                    # optional: the rule that should decide

Informational keys ``site``, ``method``, ``prefixes`` and a probe's ``region`` are
accepted and shown. Anything else is an error, so a misspelt key is never ignored.
A relative ``ca_file`` is taken relative to the plan's directory.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
)

from atlas.clients.host import parse_tz_offset
from atlas.model.errors import describe_errors
from atlas.protocol.control import ClientKind

MAX_PROBES = 200
PROBE_KINDS = (ClientKind.SUPPORT_CUSTOMER, ClientKind.REPRESENTATIVE)

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class PlanError(ValueError):
    """The plan file cannot be used; ``problems`` name each bad value."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProbeSpec(_Strict):
    """One probe client of the plan."""

    name: Name
    kind: ClientKind = ClientKind.SUPPORT_CUSTOMER
    source_address: str
    tz_offset: str | None = None
    expected_nodes: tuple[Name, ...] = ()
    expected_rule: str | None = None
    region: str | None = None

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: ClientKind) -> ClientKind:
        if value not in PROBE_KINDS:
            raise ValueError("a probe is a support_customer or a representative")
        return value

    @field_validator("source_address")
    @classmethod
    def _address(cls, value: str) -> str:
        text = value.strip()
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise ValueError(f"{text[:60]!r} is not an IP address (e.g. 10.20.1.5)") from None

    @field_validator("tz_offset")
    @classmethod
    def _offset(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_tz_offset(value)  # ValueError names what is accepted
        return value.strip()

    def offset_minutes(self) -> int | None:
        """The UTC offset the probe reports (a zone's offset as of now)."""
        return None if self.tz_offset is None else parse_tz_offset(self.tz_offset)


class PlanFile(_Strict):
    url: str | None = None
    dns: str | None = None
    ca_file: str | None = None
    representative: Name | None = None
    site: str | None = None
    method: str | None = None
    prefixes: StrictBool | None = None
    probe: list[ProbeSpec] = Field(min_length=1, max_length=MAX_PROBES)

    @field_validator("probe")
    @classmethod
    def _unique(cls, value: list[ProbeSpec]) -> list[ProbeSpec]:
        seen: set[str] = set()
        for p in value:
            if p.name.lower() in seen:
                raise ValueError(f"probe name {p.name!r} is used twice")
            seen.add(p.name.lower())
        return value


@dataclass(frozen=True)
class TestPlan:
    """A checked plan; ``ca_file`` resolved against the plan's directory."""

    path: Path
    url: str | None
    dns: str | None
    ca_file: Path | None
    representative: str | None
    method: str | None
    prefixes: bool | None
    probes: tuple[ProbeSpec, ...]


def _field_name(loc: str, data: dict[str, Any]) -> str:
    """``probe.2.tz_offset`` → ``probe 3 ('asia-rep'): tz_offset``."""
    parts = loc.split(".")
    if len(parts) >= 2 and parts[0] == "probe" and parts[1].isdigit():
        index = int(parts[1])
        probes = data.get("probe")
        name = ""
        if isinstance(probes, list) and index < len(probes) and isinstance(probes[index], dict):
            raw = probes[index].get("name")
            name = f" ({raw!r})" if isinstance(raw, str) else ""
        rest = ".".join(parts[2:])
        return f"probe {index + 1}{name}" + (f": {rest}" if rest else "")
    return loc or "(plan)"


def parse_plan(text: str, path: Path) -> TestPlan:
    """The plan in ``text`` (read from ``path``), or :class:`PlanError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(path, [f"not valid TOML: {exc}"]) from None
    try:
        plan = PlanFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_field_name(e['field'], data)}: {e['message']}"
                    for e in describe_errors(exc)]
        raise PlanError(path, problems) from None
    ca: Path | None = None
    if plan.ca_file:
        ca = Path(plan.ca_file).expanduser()
        if not ca.is_absolute():
            ca = path.parent / ca
    return TestPlan(path=path, url=plan.url, dns=plan.dns, ca_file=ca,
                    representative=plan.representative, method=plan.method,
                    prefixes=plan.prefixes, probes=tuple(plan.probe))


def load_plan(path: Path) -> TestPlan:
    """Read and check the plan file at ``path``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError(path, [f"cannot read it: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(path, ["not UTF-8 text"]) from None
    return parse_plan(text, path)
