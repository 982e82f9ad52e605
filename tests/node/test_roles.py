"""The role transition table: every (role, event) pair, and persistence."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas.node import roles
from atlas.node.roles import (
    TRANSITIONS,
    MasterIdentity,
    Role,
    RoleEvent,
    RoleTransitionError,
    WrongRole,
)
from atlas.store.db import Database

EXPECTED = {
    (Role.STANDALONE, RoleEvent.CREATE_CLUSTER): Role.PRIMARY,
    (Role.STANDALONE, RoleEvent.ACCEPT_SYNC): Role.TRAFFIC,
    (Role.TRAFFIC, RoleEvent.ACCEPT_SYNC): Role.TRAFFIC,
    (Role.TRAFFIC, RoleEvent.DISABLE_NOTICE): Role.STANDALONE,
    (Role.TRAFFIC, RoleEvent.LEAVE_CLUSTER): Role.STANDALONE,
    (Role.PRIMARY, RoleEvent.DISABLE_CLUSTER): Role.STANDALONE,
}

MASTER = MasterIdentity("support.example.test", "master1", "m-guid", "master1.example.test:443")


def test_table_is_exactly_the_documented_rules() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("role", "event"), list(itertools.product(Role, RoleEvent)))
def test_every_pair_either_transitions_or_is_refused(role: Role, event: RoleEvent) -> None:
    if (role, event) in EXPECTED:
        assert roles.next_role(role, event) is EXPECTED[(role, event)]
        assert roles.allowed(role, event)
    else:
        with pytest.raises(RoleTransitionError) as caught:
            roles.next_role(role, event)
        assert caught.value.role is role and caught.value.event is event
        assert not roles.allowed(role, event)


def test_masters_take_no_data_sync_and_cluster_members_create_no_cluster() -> None:
    for role in (Role.PRIMARY, Role.BACKUP):
        assert not roles.allowed(role, RoleEvent.ACCEPT_SYNC)
    for role in (Role.PRIMARY, Role.BACKUP, Role.TRAFFIC):
        assert not roles.allowed(role, RoleEvent.CREATE_CLUSTER)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(tmp_path / "atlas.db")
    yield d
    d.close()


def test_role_and_master_persist(tmp_path: Path, db: Database) -> None:
    assert roles.current_role(db) is Role.STANDALONE
    assert roles.transition(db, RoleEvent.ACCEPT_SYNC, master=MASTER, member="tokyo") \
        is Role.TRAFFIC
    db.close()
    again = Database(tmp_path / "atlas.db")
    try:
        assert roles.current_role(again) is Role.TRAFFIC
        assert roles.master_identity(again) == MASTER
        assert roles.member_name(again) == "tokyo"
        assert roles.transition(again, RoleEvent.DISABLE_NOTICE) is Role.STANDALONE
        assert roles.master_identity(again) is None and roles.member_name(again) is None
    finally:
        again.close()


def test_joining_needs_the_master_identity(db: Database) -> None:
    with pytest.raises(ValueError, match="identity"):
        roles.transition(db, RoleEvent.ACCEPT_SYNC)
    assert roles.current_role(db) is Role.STANDALONE


def test_refused_transition_changes_nothing(db: Database) -> None:
    roles.transition(db, RoleEvent.CREATE_CLUSTER, master=MASTER)
    with pytest.raises(RoleTransitionError):
        roles.transition(db, RoleEvent.ACCEPT_SYNC, master=MASTER)
    assert roles.current_role(db) is Role.PRIMARY and roles.master_identity(db) == MASTER


def test_require_role(db: Database) -> None:
    with pytest.raises(WrongRole, match="Sync Now needs a primary node; this node is standalone"):
        roles.require_role(db, "Sync Now", Role.PRIMARY)
    assert roles.require_role(db, "x", Role.STANDALONE, Role.TRAFFIC) is Role.STANDALONE
