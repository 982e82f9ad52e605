"""The cluster test plan file: what it accepts, and every bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest

from atlas.cluster_test.plan import PlanError, load_plan, parse_plan
from atlas.protocol.control import ClientKind

GOOD = """
url = "https://support.example.test:8443"
dns = "127.0.53.53:10053"
ca_file = "ca/ca.pem"
representative = "test-rep"
method = "random"
prefixes = true
site = "support.example.test"

[[probe]]
name = "asia-customer"
kind = "support_customer"
region = "asia"
source_address = "127.20.0.5"
tz_offset = "Asia/Tokyo"
expected_nodes = ["asia-traffic1", "asia-traffic2"]
expected_rule = "prefix"

[[probe]]
name = "us-rep"
kind = "representative"
source_address = "127.10.0.10"
tz_offset = "-05:00"
"""


def test_a_good_plan(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(GOOD)
    plan = load_plan(path)
    assert plan.url == "https://support.example.test:8443"
    assert plan.ca_file == tmp_path / "ca" / "ca.pem"  # relative to the plan's directory
    assert plan.representative == "test-rep"
    first, second = plan.probes
    assert first.kind is ClientKind.SUPPORT_CUSTOMER
    assert first.expected_nodes == ("asia-traffic1", "asia-traffic2")
    assert first.offset_minutes() == 540  # Tokyo has no DST
    assert second.kind is ClientKind.REPRESENTATIVE
    assert second.expected_nodes == () and second.offset_minutes() == -300


def test_minimal_plan_defaults() -> None:
    plan = parse_plan('[[probe]]\nname = "p"\nsource_address = "10.0.0.1"\n', Path("p.toml"))
    (probe,) = plan.probes
    assert probe.kind is ClientKind.SUPPORT_CUSTOMER
    assert probe.tz_offset is None and probe.offset_minutes() is None
    assert plan.url is None and plan.ca_file is None and plan.representative is None


def _problems(text: str) -> list[str]:
    with pytest.raises(PlanError) as caught:
        parse_plan(text, Path("plan.toml"))
    assert str(caught.value).startswith("plan.toml: ")
    return caught.value.problems


PROBE = '[[probe]]\nname = "p1"\nsource_address = "10.0.0.1"\n'


@pytest.mark.parametrize(("text", "expected"), [
    ("url = ", "not valid TOML"),
    ('url = "https://x"\n', "probe: this setting is required"),
    ("probe = []\n", "probe: List should have at least 1 item"),
    ('colour = "red"\n' + PROBE, "colour: unknown setting"),
    (PROBE + 'sorce_address = "10.0.0.2"\n', "probe 1 ('p1'): sorce_address: unknown setting"),
    ('[[probe]]\nname = "p1"\nsource_address = "10.0.0.300"\n',
     "probe 1 ('p1'): source_address: '10.0.0.300' is not an IP address"),
    ('[[probe]]\nname = "p1"\n', "probe 1 ('p1'): source_address: this setting is required"),
    ('[[probe]]\nsource_address = "10.0.0.1"\n', "probe 1: name: this setting is required"),
    ('[[probe]]\nname = ""\nsource_address = "10.0.0.1"\n', "probe 1 (''): name:"),
    (PROBE + 'kind = "presentation_attendee"\n',
     "probe 1 ('p1'): kind: a probe is a support_customer or a representative"),
    (PROBE + 'kind = "robot"\n', "probe 1 ('p1'): kind: Input should be"),
    (PROBE + 'tz_offset = "Mars/Olympus"\n', "probe 1 ('p1'): tz_offset: --tz-offset"),
    (PROBE + 'tz_offset = "+25:00"\n', "probe 1 ('p1'): tz_offset:"),
    (PROBE + "expected_nodes = [1]\n", "probe 1 ('p1'): expected_nodes.0:"),
    (PROBE + PROBE.replace("p1", "P1"), "probe: Value error, probe name 'P1' is used twice"),
    ('prefixes = "yes"\n' + PROBE, "prefixes: expected true or false"),
])
def test_bad_plans_are_named(text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(expected.removeprefix("probe: Value error, ") in p or expected in p
               for p in problems), problems


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read it"):
        load_plan(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PlanError, match="not UTF-8"):
        load_plan(binary)


def test_too_many_probes() -> None:
    text = "".join(f'[[probe]]\nname = "p{i}"\nsource_address = "10.0.0.1"\n'
                   for i in range(201))
    assert any("at most 200" in p for p in _problems(text))
