"""The plan of ``atlas cluster apply``, purely: two documents in, changes out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.cluster_plan import (
    ChangeKind,
    FieldChange,
    Subject,
    carry_guids,
    plan,
    same_document,
)
from atlas.model.config import ClusterConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "cluster.toml"


def example() -> ClusterConfig:
    return ClusterConfig.from_toml(EXAMPLE.read_text())


def doc(**changes: Any) -> ClusterConfig:
    data = example().model_dump(mode="json")
    data.update(changes)
    return ClusterConfig.model_validate(data)


def nodes(config: ClusterConfig) -> list[dict[str, Any]]:
    return [n.model_dump(mode="json") for n in config.traffic_nodes]


def test_the_same_document_is_no_change() -> None:
    p = plan(example(), example())
    assert p.empty and p.summary() == "no changes" and p.lines() == []
    stored = example().model_copy(update={"revision": 12})
    assert plan(stored, example()).empty  # the revision is never a change


def test_a_new_cluster_is_all_additions() -> None:
    p = plan(None, example())
    assert {c.kind for c in p.changes} == {ChangeKind.ADD}
    subjects = [(c.subject, c.name) for c in p.changes]
    assert subjects[:3] == [(Subject.SITE, "support.example.com"),
                            (Subject.PRIMARY, "master1"), (Subject.BACKUP, "master2")]
    assert [n for s, n in subjects if s is Subject.TRAFFIC_NODE] == [
        "us-traffic1", "us-traffic2", "asia-traffic1"]
    assert p.summary() == "8 to add, 0 to change, 0 to remove"


def test_field_level_changes() -> None:
    current = example()
    data = nodes(current)
    data[0]["prefixes"] = ["10.10.0.0/16", "10.11.0.0/16"]
    data[0]["accepting"] = False
    data[2]["public"] = "tokyo.support.example.com:8443"
    desired = doc(traffic_nodes=data, selection={"method": "random",
                                                 "master_fallback_limit": 10})
    p = plan(current, desired)
    assert p.summary() == "0 to add, 3 to change, 0 to remove"
    by_name = {c.name: c for c in p.changes}
    assert by_name["us-traffic1"].fields == (
        FieldChange("accepting", True, False),
        FieldChange("prefixes", ("10.10.0.0/16",), ("10.10.0.0/16", "10.11.0.0/16")),
    )
    assert by_name["asia-traffic1"].fields == (
        FieldChange("public", "asia-traffic1.support.example.com:443",
                    "tokyo.support.example.com:8443"),)
    assert by_name["selection"].subject is Subject.SELECTION
    assert {f.field for f in by_name["selection"].fields} == {"method",
                                                                "master_fallback_limit"}
    text = "\n".join(p.lines())
    assert "~ change traffic node 'us-traffic1'" in text
    assert "    accepting: true → false" in text
    assert "    prefixes: [10.10.0.0/16] → [10.10.0.0/16, 10.11.0.0/16]" in text
    assert "    method: 'timezone' → 'random'" in text


def test_adds_removes_renames_and_order() -> None:
    current = example()
    data = nodes(current)
    data[1]["name"] = "us-west"  # no GUID: a rename is a removal and an addition
    data.append({"name": "eu-traffic1", "public": "eu-traffic1.support.example.com:443"})
    p = plan(current, doc(traffic_nodes=data, backup=None))
    kinds = [(c.kind, c.subject, c.name) for c in p.changes]
    assert (ChangeKind.REMOVE, Subject.BACKUP, "master2") in kinds
    assert (ChangeKind.REMOVE, Subject.TRAFFIC_NODE, "us-traffic2") in kinds
    assert (ChangeKind.ADD, Subject.TRAFFIC_NODE, "us-west") in kinds
    assert (ChangeKind.ADD, Subject.TRAFFIC_NODE, "eu-traffic1") in kinds
    assert p.summary() == "2 to add, 0 to change, 2 to remove"

    # with a GUID the same node is recognised under its new name
    with_guids = nodes(current)
    with_guids[1]["guid"] = "guid-2"
    renamed = [dict(n) for n in with_guids]
    renamed[1]["name"] = "us-west"
    p = plan(doc(traffic_nodes=with_guids), doc(traffic_nodes=renamed))
    [change] = p.changes
    assert (change.kind, change.name, change.fields) == (
        ChangeKind.CHANGE, "us-west", (FieldChange("name", "us-traffic2", "us-west"),))

    # names match ignoring case; order alone is a change
    shuffled = list(reversed(nodes(current)))
    p = plan(current, doc(traffic_nodes=shuffled))
    [change] = p.changes
    assert change.subject is Subject.TRAFFIC_NODE_ORDER
    assert change.fields[0].new == ("asia-traffic1", "us-traffic2", "us-traffic1")


def test_guids_the_file_leaves_out_are_kept() -> None:
    data = example().model_dump(mode="json")
    data["primary"]["guid"] = "5ba00afaa07a4090b0e2d07edc6fe1bf"
    data["traffic_nodes"][0]["guid"] = "tokyo-guid"
    current = ClusterConfig.model_validate(data)
    desired = example()
    assert not plan(current, desired).empty  # the GUIDs would be dropped
    carried = carry_guids(current, desired)
    assert plan(current, carried).empty
    assert carried.primary.guid == "5ba00afaa07a4090b0e2d07edc6fe1bf"
    assert carried.traffic_nodes[0].guid == "tokyo-guid"
    # a GUID the file gives wins; one the file gives to another node is not duplicated
    data["traffic_nodes"][1]["guid"] = None
    mine = example().model_dump(mode="json")
    mine["traffic_nodes"][1]["guid"] = "tokyo-guid"
    carried = carry_guids(current, ClusterConfig.model_validate(mine))
    assert carried.traffic_nodes[0].guid is None
    assert carried.traffic_nodes[1].guid == "tokyo-guid"
    assert carry_guids(None, desired) is desired


# --- a plan is empty exactly when the documents are the same -----------------------------------

EDITS: list[tuple[str, Any]] = [
    ("site", lambda d: d.update(site_hostname="help.example.com")),
    ("primary name", lambda d: d["primary"].update(name="hq")),
    ("primary internal", lambda d: d["primary"].update(internal="m1.int.example.com:443")),
    ("no backup", lambda d: d.update(backup=None)),
    ("method", lambda d: d["selection"].update(method="random")),
    ("limit", lambda d: d["selection"].update(master_fallback_limit=7)),
    ("health", lambda d: d["health"].update(interval_seconds=1.0)),
    ("drop last", lambda d: d["traffic_nodes"].pop()),
    ("reverse", lambda d: d["traffic_nodes"].reverse()),
    ("capacity", lambda d: d["traffic_nodes"][0].update(capacity=5)),
    ("accepting", lambda d: d["traffic_nodes"][1].update(accepting=False)),
    ("region", lambda d: d["traffic_nodes"][2].update(region="JP")),
    ("timezone", lambda d: d["traffic_nodes"][0].update(timezone="+01:00")),
    ("prefixes", lambda d: d["traffic_nodes"][1].update(prefixes=[])),
    ("guid", lambda d: d["traffic_nodes"][2].update(guid="abc")),
    ("add", lambda d: d["traffic_nodes"].append(
        {"name": "eu", "public": "eu.support.example.com:443"})),
    ("same value", lambda d: d["traffic_nodes"][0].update(accepting=True)),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(range(len(EDITS))), max_size=4, unique=True),
       st.lists(st.sampled_from(range(len(EDITS))), max_size=4, unique=True))
def test_plan_is_empty_exactly_for_equal_documents(a: list[int], b: list[int]) -> None:
    def build(edits: list[int]) -> ClusterConfig:
        data = example().model_dump(mode="json")
        for i in edits:
            if EDITS[i][0] in ("drop last",) and not data["traffic_nodes"]:
                continue
            try:
                EDITS[i][1](data)
            except IndexError:
                continue
        return ClusterConfig.model_validate(data)

    first, second = build(a), build(b)
    p = plan(first, second)
    assert p.empty == same_document(first, second), (a, b, p.lines())
    assert plan(second, second).empty
