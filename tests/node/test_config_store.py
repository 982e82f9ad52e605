"""The versioned cluster configuration document: revisions, history, sync needed,
atomic apply on a traffic node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas.model.config import ClusterConfig
from atlas.store import config_store
from atlas.store.config_store import InvalidDocument, RevisionKind, StaleRevision
from atlas.store.db import Database


def _config(*names: str, accepting: bool = True) -> ClusterConfig:
    return ClusterConfig.model_validate(
        {
            "site_hostname": "support.example.test",
            "primary": {"name": "master1", "guid": "m-guid",
                        "public": "master1.example.test:443"},
            "traffic_nodes": [
                {"name": n, "public": f"{n}.example.test:443", "accepting": accepting}
                for n in names
            ],
        }
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(tmp_path / "atlas.db")
    yield d
    d.close()


def _ack_all(db: Database, revision: int, *names: str) -> None:
    for n in names:
        config_store.record_ack(db, n, revision=revision, guid=f"g-{n}", reported_name=n,
                                version="0.1.0")


def test_no_document_until_saved(db: Database) -> None:
    assert config_store.load(db) is None
    assert config_store.current_revision(db) == 0
    assert not config_store.sync_needed(db)


def test_every_save_increments_the_revision_and_keeps_history(db: Database) -> None:
    first = config_store.save(db, _config("a"), expected_revision=0, author="alice")
    assert first.revision == 1
    second = config_store.save(db, _config("a", "b"), expected_revision=1, author="bob")
    assert second.revision == 2
    loaded = config_store.load(db)
    assert loaded == second and [n.name for n in loaded.traffic_nodes] == ["a", "b"]
    assert [(h.revision, h.author) for h in config_store.history(db)] == [(2, "bob"),
                                                                        (1, "alice")]
    old = config_store.load_revision(db, 1)
    assert old is not None and len(old.traffic_nodes) == 1


def test_stale_revision_refused_and_nothing_stored(db: Database) -> None:
    config_store.save(db, _config("a"), expected_revision=None, author="x")
    config_store.save(db, _config("a", "b"), expected_revision=1, author="x")
    with pytest.raises(StaleRevision) as caught:
        config_store.save(db, _config("c"), expected_revision=1, author="x")
    assert caught.value.current == 2
    assert config_store.current_revision(db) == 2
    # Without expected_revision, last writer wins.
    assert config_store.save(db, _config("c"), expected_revision=None, author="x").revision == 3


def test_sync_needed_until_every_traffic_node_acknowledged(db: Database) -> None:
    config_store.save(db, _config("a", "b"), expected_revision=0, author="x")
    assert config_store.nodes_needing_sync(db) == ["a", "b"]
    _ack_all(db, 1, "a")
    assert config_store.nodes_needing_sync(db) == ["b"]
    _ack_all(db, 1, "b")
    assert not config_store.sync_needed(db)
    config_store.save(db, _config("a", "b"), expected_revision=1, author="x")  # any edit
    assert config_store.nodes_needing_sync(db) == ["a", "b"]


def test_cluster_without_traffic_nodes_needs_no_sync(db: Database) -> None:
    config_store.save(db, _config(), expected_revision=0, author="x")
    assert not config_store.sync_needed(db)


def test_accepting_only_revision_needs_no_full_sync_once_confirmed(db: Database) -> None:
    config_store.save(db, _config("a", "b"), expected_revision=0, author="x")
    _ack_all(db, 1, "a", "b")
    draining = _config("a", "b").model_copy()
    nodes = (draining.traffic_nodes[0].model_copy(update={"accepting": False}),
             draining.traffic_nodes[1])
    saved = config_store.save(db, draining.model_copy(update={"traffic_nodes": nodes}),
                              expected_revision=1, author="x")
    assert config_store.history(db)[0].kind is RevisionKind.ACCEPTING
    assert config_store.history(db)[0].subject == "a"
    # Only the node whose flag changed lacks it, until it confirms the fast path.
    assert config_store.nodes_needing_sync(db) == ["a"]
    config_store.record_accepting_ack(db, "a", saved.revision)
    assert not config_store.sync_needed(db)


def test_two_changes_at_once_are_an_edit(db: Database) -> None:
    config_store.save(db, _config("a", "b"), expected_revision=0, author="x")
    config_store.save(db, _config("a", "b", accepting=False), expected_revision=1, author="x")
    assert config_store.history(db)[0].kind is RevisionKind.EDIT


def test_clear_keeps_history_and_revisions_keep_growing(db: Database) -> None:
    config_store.save(db, _config("a"), expected_revision=0, author="x")
    config_store.clear(db)
    assert config_store.load(db) is None and config_store.current_revision(db) == 0
    assert len(config_store.history(db)) == 1
    assert config_store.save(db, _config("a"), expected_revision=0, author="x").revision == 2


# --- a traffic node -------------------------------------------------------------------


def _pushed(revision: int, *names: str) -> str:
    return _config(*names).model_copy(update={"revision": revision}).canonical_json()


def test_apply_synced_makes_the_pushed_revision_current(db: Database) -> None:
    config = config_store.apply_synced(db, _pushed(7, "a"), 7)
    assert config.revision == 7
    assert config_store.load(db) == config
    assert config_store.history(db)[0].kind is RevisionKind.SYNCED


def test_apply_synced_refuses_invalid_documents(db: Database) -> None:
    config_store.apply_synced(db, _pushed(3, "a"), 3)
    with pytest.raises(InvalidDocument, match="prefixes"):
        bad = _pushed(4, "a").replace('"prefixes":[]', '"prefixes":["300.1.2.3/8"]')
        config_store.apply_synced(db, bad, 4)
    with pytest.raises(InvalidDocument, match="revision"):
        config_store.apply_synced(db, _pushed(4, "a"), 5)
    with pytest.raises(InvalidDocument):
        config_store.apply_synced(db, "{not json", 4)
    assert config_store.current_revision(db) == 3


def test_failure_between_statements_leaves_the_previous_revision(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injects a failure between the INSERT of the new row and the pointer update (the
    integration test kills a real process at the same point)."""
    config_store.apply_synced(db, _pushed(3, "a"), 3)

    def boom() -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(config_store, "_between_statements", boom)
    with pytest.raises(RuntimeError, match="power cut"):
        config_store.apply_synced(db, _pushed(4, "a", "b"), 4)
    monkeypatch.setattr(config_store, "_between_statements", None)
    current = config_store.load(db)
    assert current is not None and current.revision == 3 and len(current.traffic_nodes) == 1
    assert config_store.load_revision(db, 4) is None  # the row was rolled back too


def test_then_failure_rolls_back_the_document(db: Database) -> None:
    config_store.apply_synced(db, _pushed(3, "a"), 3)

    def role_change_fails() -> None:
        raise ValueError("role")

    with pytest.raises(ValueError, match="role"):
        config_store.apply_synced(db, _pushed(4, "a"), 4, then=role_change_fails)
    assert config_store.current_revision(db) == 3


def test_accepting_fast_path_on_a_traffic_node(db: Database) -> None:
    config_store.apply_synced(db, _pushed(3, "a", "b"), 3)
    config = config_store.apply_accepting(db, "a", False, 4)
    assert config.revision == 3  # the document held stays revision 3 …
    assert not config.traffic_nodes[0].accepting  # … with the newer flag applied
    assert config_store.load(db) == config
    # A full sync of a later revision supersedes the flag.
    config_store.apply_synced(db, _pushed(5, "a", "b"), 5)
    reloaded = config_store.load(db)
    assert reloaded is not None and reloaded.traffic_nodes[0].accepting
    with pytest.raises(LookupError):
        config_store.apply_accepting(db, "zzz", False, 6)
