"""What ``atlas demo`` and ``atlas demo set-method`` send through the REST API.

:func:`plan_configuration` is pure: it is checked against the configuration model the
REST API validates with, by applying its calls to a document the way the API does.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from atlas.demo.configure import (
    ConfigPlan,
    current_method,
    plan_configuration,
    synced_problems,
)
from atlas.demo.layout import METHOD_NAMES, MethodChoice, default_layout, method_choice
from atlas.model.config import ClusterConfig, SelectionMethod
from atlas.web.api_v1.cluster_models import ClusterOut, TrafficNodeStatusOut

LAYOUT = default_layout()
CHOICES = [method_choice(name, prefixes)
           for name, prefixes in itertools.product(METHOD_NAMES, (None, True, False))]


def document(choice: MethodChoice, **node_changes: dict[str, Any]) -> ClusterConfig:
    """The primary's document after the demo configured ``choice`` (GUIDs as learned at
    the first sync), with ``node_changes`` an operator made since."""
    data = LAYOUT.document(choice)
    for i, node in enumerate(data["traffic_nodes"]):
        node["guid"] = f"{i + 1:032x}"
        node.update(node_changes.get(node["name"], {}))
    return ClusterConfig.model_validate(data)


def apply(doc: ClusterConfig, plan: ConfigPlan) -> ClusterConfig:
    """What the primary holds after the plan's calls (the API's own rules: Edit Traffic
    Node replaces every field and keeps a GUID left out)."""
    data = doc.model_dump(mode="json")
    if plan.health is not None:
        data["health"] = plan.health
    for edit in plan.nodes:
        if edit.add:
            data["traffic_nodes"].append(edit.body)
            continue
        index = next(i for i, t in enumerate(data["traffic_nodes"]) if t["name"] == edit.name)
        data["traffic_nodes"][index] = {**edit.body,
                                        "guid": data["traffic_nodes"][index]["guid"]}
    if plan.selection is not None:
        data["selection"] = plan.selection
    return ClusterConfig.model_validate(data)


def test_a_standalone_primary_gets_the_whole_cluster() -> None:
    choice = method_choice("random")
    plan = plan_configuration(LAYOUT, choice, None, reset=True)
    assert plan.create == {"site_hostname": LAYOUT.site,
                           "primary": {"name": "master1", "public": LAYOUT.primary.public},
                           "health": LAYOUT.health_body()}
    assert [e.name for e in plan.nodes] == [n.name for n in LAYOUT.traffic_nodes]
    assert all(e.add for e in plan.nodes)
    assert plan.selection == LAYOUT.selection_body(choice)
    assert plan.changes[0].startswith("+ Create New Cluster support.example.test")
    assert "+ traffic node asia-traffic1: prefixes 127.20.0.0/16, timezone Asia/Tokyo, " \
           "region asia" in plan.changes
    assert plan.changes[-1] == ("~ method for choosing traffic nodes: random (with network "
                                "address prefixes)")


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: c.describe())
def test_a_cluster_that_already_matches_gets_nothing(choice: MethodChoice) -> None:
    for reset in (True, False):
        plan = plan_configuration(LAYOUT, choice, document(choice), reset=reset)
        assert plan == ConfigPlan(None, None, (), None, ()), plan


@pytest.mark.parametrize(("before", "after"), list(itertools.product(CHOICES, CHOICES)),
                         ids=lambda c: f"{c.name}-{c.prefixes}")
def test_set_method_makes_the_cluster_what_the_new_method_says(
        before: MethodChoice, after: MethodChoice) -> None:
    doc = document(before)
    plan = plan_configuration(LAYOUT, after, doc, reset=False)
    assert plan.create is None and plan.health is None
    assert all(not e.add for e in plan.nodes)
    result = apply(doc, plan)
    wanted = document(after)
    assert result.selection == wanted.selection
    assert result.traffic_nodes == wanted.traffic_nodes
    assert current_method(result) == after.describe()
    assert plan_configuration(LAYOUT, after, result, reset=False).changes == ()


def test_set_method_says_what_changes() -> None:
    plan = plan_configuration(LAYOUT, method_choice("timezone"),
                              document(method_choice("random")), reset=False)
    assert plan.changes == (
        "~ traffic node us-traffic1: prefixes 127.10.0.0/16 → none",
        "~ traffic node us-traffic2: prefixes 127.10.0.0/16 → none",
        "~ traffic node asia-traffic1: prefixes 127.20.0.0/16 → none",
        "~ traffic node asia-traffic2: prefixes 127.20.0.0/16 → none",
        "~ method for choosing traffic nodes: random → timezone",
    )
    assert [e.body["prefixes"] for e in plan.nodes] == [[], [], [], []]
    back = plan_configuration(LAYOUT, method_choice("prefixes"),
                              document(method_choice("timezone")), reset=False)
    assert back.changes[0] == "~ traffic node us-traffic1: prefixes none → 127.10.0.0/16"
    assert back.changes[-1] == "~ method for choosing traffic nodes: timezone → random"


def test_set_method_leaves_what_an_operator_changed_but_a_restart_resets_it() -> None:
    drained = {"us-traffic2": {"accepting": False, "capacity": 7}}
    doc = document(method_choice("random"), **drained)
    plan = plan_configuration(LAYOUT, method_choice("srv"), doc, reset=False)
    body = next(e.body for e in plan.nodes if e.name == "us-traffic2")
    assert body["accepting"] is False and body["capacity"] == 7 and body["prefixes"] == []
    assert apply(doc, plan).traffic_nodes[1].accepting is False

    same = plan_configuration(LAYOUT, method_choice("random"), doc, reset=True)
    assert [e.name for e in same.nodes] == ["us-traffic2"]
    assert same.changes == ("~ traffic node us-traffic2: accepting False → True; "
                            "capacity 7 → 1000",)
    assert same.nodes[0].body == LAYOUT.traffic_node_body(LAYOUT.node("us-traffic2"), True)


def test_health_settings_are_put_back_when_they_differ() -> None:
    data = document(method_choice("random")).model_dump(mode="json")
    data["health"] = {"interval_seconds": 5.0, "timeout_seconds": 15.0}
    plan = plan_configuration(LAYOUT, method_choice("random"),
                              ClusterConfig.model_validate(data), reset=True)
    assert plan.health == LAYOUT.health_body()
    assert plan.changes == ("~ health checks: interval_seconds 5.0 → 2.0; "
                            "timeout_seconds 15.0 → 6.0",)


# ---- waiting for the sync ---------------------------------------------------------------------


def status(*nodes: dict[str, Any], revision: int = 9, sync_needed: bool = False) -> ClusterOut:
    base = {"name": "n", "guid": None, "public": "n.x:1", "internal": "n.x:1", "region": "",
            "accepting": True, "capacity": 1000, "state": "viable", "online": True,
            "last_seen": dt.datetime.now(dt.UTC), "version": "1", "acknowledged_revision": 9,
            "needs_sync": False, "load": None, "sessions_left": None, "sync": None,
            "health": None}
    return ClusterOut.model_construct(
        revision=revision, sync_needed=sync_needed,
        traffic_nodes=[TrafficNodeStatusOut.model_validate({**base, **n}) for n in nodes])


def test_synced_means_every_node_online_and_on_the_revision() -> None:
    assert synced_problems(status({"name": "a"}, {"name": "b"})) == []
    assert synced_problems(status({"name": "a", "acknowledged_revision": 8})) == [
        "a: viable, revision 8"]
    assert synced_problems(status({"name": "a", "online": False, "state": "offline"})) == [
        "a: offline, revision 9"]
    assert synced_problems(status()) == ["no traffic nodes"]
    assert synced_problems(status({"name": "a"}, sync_needed=True)) == ["a sync is needed"]


def test_a_drained_node_counts_as_synced() -> None:
    drained = {"name": "a", "accepting": False, "state": "not accepting"}
    assert synced_problems(status(drained)) == []
    assert synced_problems(status({**drained, "online": False})) != []


def test_the_documents_method_is_named_as_the_demo_names_it() -> None:
    assert current_method(document(method_choice("prefixes"))) == \
        "random (with network address prefixes)"
    doc = document(method_choice("anycast"))
    assert doc.selection.method is SelectionMethod.ANYCAST
    assert current_method(doc) == "anycast (without network address prefixes)"
