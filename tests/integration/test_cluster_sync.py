"""Nodes talk to each other: data sync, refusals, health, Disable Cluster, crash safety.

The traffic nodes are real ``python -m atlas serve`` processes, each on its own
127.x.y.z address with a certificate from one test CA and a hostname served by a real
DNS server (dnsmasq); every request between nodes is real TLS, signed with the PSK.

The test process itself acts as the primary master: it opens the master's data directory
as a :class:`~atlas.node.runtime.Node` and calls :mod:`atlas.node.cluster`,
:mod:`atlas.node.sync` and :mod:`atlas.node.health_monitor` directly. The cluster REST
API that would let a separate master process be driven from outside does not exist yet,
and two processes must not write one master database; end-to-end tests through the REST
API come with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atlas.model.config import Address
from atlas.node import cluster, roles
from atlas.node.health_monitor import monitor_for
from atlas.node.internal_api import PREFIX
from atlas.node.peers import PeerClient
from atlas.node.roles import Role
from atlas.node.sync import NodeSyncState, SyncProgress
from atlas.store import config_store, history
from atlas.store.config_store import FAULT_CRASH_ENV, FAULT_EXIT_CODE
from tests.support.cluster import SITE, LocalCluster, TrafficProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def poll(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def history_since(c: LocalCluster, first_id: int) -> list[tuple[int, str]]:
    rows = [r for r in history.recent(c.master.db, limit=1000) if r.id > first_id]
    return [(r.status, r.message) for r in reversed(rows)]


def last_history_id(c: LocalCluster) -> int:
    rows = history.recent(c.master.db, limit=1)
    return rows[0].id if rows else 0


def label(t: TrafficProcess) -> str:
    return f"{t.name} ({t.address})"


async def node_health(c: LocalCluster, t: TrafficProcess) -> dict[str, Any]:
    async with PeerClient(c.master) as peers:
        return await peers.call(Address.parse(t.address), "GET", f"{PREFIX}/health",
                                peer=t.name)


def edit(c: LocalCluster, **selection: Any) -> int:
    """An operator's edit on the master: a new revision."""
    config = config_store.load(c.master.db)
    assert config is not None
    changed = config.model_copy(
        update={"selection": config.selection.model_copy(update=selection)}
    )
    return config_store.save(c.master.db, changed, expected_revision=config.revision,
                             author="test").revision


async def test_sync_brings_every_traffic_node_to_the_latest_revision(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, ["t1", "t2", "t3"]) as c:
        c.start()
        config = cluster.create_cluster(c.master, SITE, traffic_nodes=c.entries())
        assert roles.current_role(c.master.db) is Role.PRIMARY
        assert config_store.sync_needed(c.master.db)
        before = last_history_id(c)
        steps: list[SyncProgress] = []
        report = await cluster.sync_now(c.master, on_progress=steps.append)

        assert report.ok, report.failed
        assert {r.name: r.revision for r in report.results} == dict.fromkeys(c.traffic, 1)
        assert not config_store.sync_needed(c.master.db)
        statuses = config_store.node_statuses(c.master.db)
        for t in c.traffic.values():
            assert statuses[t.name].acked_revision == config.revision
            assert statuses[t.name].reported_name == t.name
            assert statuses[t.name].guid and statuses[t.name].version == c.master.software_version
        # Progress: started then finished, per node; the last step says all are done.
        for name in c.traffic:
            states = [s.state for s in steps if s.node == name]
            assert states == [NodeSyncState.STARTED, NodeSyncState.FINISHED]
        assert steps[-1].done == steps[-1].total == 3

        rows = history_since(c, before)
        assert all(status == 0 for status, _ in rows)
        messages = [m for _, m in rows]
        assert messages[0] == "Data Sync: Started configuration data sync with traffic nodes."
        assert messages[-1] == "Data Sync: Finished data sync with traffic nodes."
        for t in c.traffic.values():
            started = messages.index(f"Data Sync: Started configuration data sync with {label(t)}.")
            finished = messages.index(
                f"Data Sync: Finished configuration data sync with {label(t)}."
            )
            assert 0 < started < finished < len(messages) - 1
        assert len(messages) == 2 + 2 * 3

        # Each node is a traffic node of this master, holding revision 1.
        for t in c.traffic.values():
            health = await node_health(c, t)
            assert health["role"] == "traffic" and health["revision"] == 1
            assert health["master_guid"] == c.master.identity.guid
            assert (0, "Data Sync: Applied configuration revision 1 from master1.") in t.history()

        # An edit raises "sync needed"; the next sync brings everyone to it.
        revision = edit(c, master_fallback_limit=7)
        assert config_store.nodes_needing_sync(c.master.db) == ["t1", "t2", "t3"]
        report = await cluster.sync_now(c.master)
        assert report.ok and {r.revision for r in report.results} == {revision}
        assert not config_store.sync_needed(c.master.db)
        for t in c.traffic.values():
            assert (await node_health(c, t))["revision"] == revision


async def test_each_failure_is_refused_and_reported_with_its_own_reason(tmp_path: Path) -> None:
    names = ["ok", "otherpsk", "down", "oldver"]
    with LocalCluster(tmp_path, names) as c:
        c.set_psk("otherpsk", "a different pre-shared key")
        c.start("ok", "otherpsk", "down")
        c.start("oldver", env={"ATLAS_SOFTWARE_VERSION_OVERRIDE": "9.9.9"})
        cluster.create_cluster(c.master, SITE, traffic_nodes=c.entries())
        c.traffic["down"].kill()
        before = last_history_id(c)
        report = await cluster.sync_now(c.master, timeout=5)

        by_name = {r.name: r for r in report.results}
        assert by_name["ok"].ok and by_name["ok"].revision == 1
        assert by_name["otherpsk"].reason == "psk_mismatch"
        assert by_name["down"].reason == "unreachable"
        assert by_name["oldver"].reason == "version_mismatch"
        assert report.summary == "1 of 4 nodes synced"

        rows = history_since(c, before)
        failed = {m for s, m in rows if s != 0}
        t = c.traffic
        mine = c.master.software_version
        assert f"Data Sync: Failed configuration data sync with {label(t['otherpsk'])}: " \
            "pre-shared key mismatch with otherpsk (its pre-shared key differs from ours)." \
            in failed
        assert f"Data Sync: Failed configuration data sync with {label(t['down'])}: " \
            "unreachable (connection refused)." in failed
        assert f"Data Sync: Failed configuration data sync with {label(t['oldver'])}: " \
            f"software version mismatch (oldver runs 9.9.9, master runs {mine})." in failed
        assert rows[-1] == (1, "Data Sync: Finished data sync with traffic nodes: "
                               "1 of 4 nodes synced.")
        # The refusing node recorded why, naming the sender.
        psk_rows = [m for s, m in t["otherpsk"].history() if s != 0]
        assert any(m.startswith("Cluster: pre-shared key mismatch with request from ")
                   and c.master.identity.guid in m for m in psk_rows), psk_rows

        # A tampered body and a replayed request, against the healthy node.
        payload = b'{"accepting":false,"revision":1}'
        async with PeerClient(c.master) as peers, c.raw_session() as session:
            headers, _ = peers.signed_headers("POST", f"{PREFIX}/accepting", payload)
            tampered = payload.replace(b"false", b"true ")
            status, body = await c.send_raw(session, t["ok"], "POST", f"{PREFIX}/accepting",
                                            tampered, headers)
            assert (status, body["error"]["reason"]) == (401, "bad_signature")
            headers, _ = peers.signed_headers("GET", f"{PREFIX}/health", b"")
            status, body = await c.send_raw(session, t["ok"], "GET", f"{PREFIX}/health", b"",
                                            headers)
            assert status == 200 and body["revision"] == 1
            status, body = await c.send_raw(session, t["ok"], "GET", f"{PREFIX}/health", b"",
                                            headers)
            assert (status, body["error"]["reason"]) == (401, "replayed_request")
        refused = [m for s, m in t["ok"].history() if s != 0]
        assert any("signature does not match" in m for m in refused), refused
        assert any("replayed request" in m for m in refused), refused
        # The healthy node was unaffected: still accepting, still on revision 1.
        health = await node_health(c, t["ok"])
        assert health["revision"] == 1 and health["accepting"] is True

        # The node that was down gets the latest at the next sync.
        c.start("down")
        revision = edit(c, master_fallback_limit=9)
        report = await cluster.sync_now(c.master, timeout=5)
        by_name = {r.name: r for r in report.results}
        assert by_name["down"].ok and by_name["down"].revision == revision
        assert by_name["ok"].ok
        assert config_store.nodes_needing_sync(c.master.db) == ["otherpsk", "oldver"]


async def test_killed_node_goes_offline_within_the_timeout_and_comes_back(
    tmp_path: Path,
) -> None:
    with LocalCluster(tmp_path, ["t1", "t2"]) as c:
        c.start()
        cluster.create_cluster(c.master, SITE, traffic_nodes=c.entries(),
                               health={"interval_seconds": 0.5, "timeout_seconds": 2.0})
        assert (await cluster.sync_now(c.master)).ok
        monitor = monitor_for(c.master)
        task = asyncio.create_task(monitor.run())
        try:
            def online(name: str) -> bool:
                return monitor.snapshot().get(name) is not None and \
                    monitor.snapshot()[name].online

            await poll(lambda: online("t1") and online("t2"), 10, "both nodes online")
            snap = monitor.snapshot()["t1"]
            assert snap.synced and snap.config_revision == 1
            assert snap.software_version == c.master.software_version

            c.traffic["t1"].kill()
            killed = time.monotonic()
            await poll(lambda: not online("t1"), 10, "t1 offline")
            assert time.monotonic() - killed <= 2.0 + 1.0  # timeout + one interval + slack
            details = monitor.details()["t1"]
            assert details.error_reason == "unreachable"
            assert online("t2")
            def gauge(node: str) -> float | None:
                return c.master.metrics.get_sample_value("atlas_traffic_node_online",
                                                         {"node": node})

            await poll(lambda: gauge("t1") == 0, 5, "the t1 online gauge at 0")
            assert gauge("t2") == 1

            c.start("t1")
            await poll(lambda: online("t1"), 10, "t1 back online")
            status = cluster.status(c.master)
            assert [n.health.online for n in status.nodes if n.health] == [True, True]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_disable_cluster_names_the_unreachable_node(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, ["t1", "t2", "t3"]) as c:
        c.start()
        cluster.create_cluster(c.master, SITE, traffic_nodes=c.entries())
        assert (await cluster.sync_now(c.master)).ok
        c.traffic["t3"].kill()
        before = last_history_id(c)
        report = await cluster.disable_cluster(c.master, timeout=5)

        assert [r.name for r in report.unreachable] == ["t3"]
        assert {r.name for r in report.results if r.notified} == {"t1", "t2"}
        rows = history_since(c, before)
        t3 = c.traffic["t3"]
        assert (1, f"Disable Cluster: could not notify {label(t3)} (unreachable: connection "
                   "refused); log in to it and remove it from the cluster manually.") in rows
        for name in ("t1", "t2"):
            t = c.traffic[name]
            assert (0, f"Disable Cluster: Notified {label(t)}; it is no longer in a cluster.") \
                in rows
            health = await node_health(c, t)
            assert health["role"] == "standalone" and health["revision"] == 0
        assert roles.current_role(c.master.db) is Role.STANDALONE
        assert config_store.load(c.master.db) is None
        assert config_store.history(c.master.db)  # the revisions stay as history
        assert cluster.status(c.master).role is Role.STANDALONE

        # The unreachable node, once back, is still a traffic node until removed by hand.
        c.start("t3")
        assert (await node_health(c, t3))["role"] == "traffic"
        assert t3.setting("cluster.role") == "traffic"


async def test_crash_during_apply_leaves_the_previous_revision(tmp_path: Path) -> None:
    """Kills the traffic node's process inside the apply transaction, between its two
    statements (the test-only ``ATLAS_FAULT_CRASH_MID_APPLY`` fault point)."""
    with LocalCluster(tmp_path, ["t1"]) as c:
        t1 = c.traffic["t1"]
        c.start()
        cluster.create_cluster(c.master, SITE, traffic_nodes=c.entries())
        assert (await cluster.sync_now(c.master)).ok
        t1.stop()
        c.start("t1", env={FAULT_CRASH_ENV: "1"})
        revision = edit(c, master_fallback_limit=3)
        report = await cluster.sync_now(c.master, timeout=10)
        assert report.results[0].reason == "unreachable"
        assert t1.proc is not None and t1.proc.wait(10) == FAULT_EXIT_CODE

        c.start("t1")
        health = await node_health(c, t1)
        assert health["revision"] == 1 and health["role"] == "traffic"
        assert (await cluster.sync_now(c.master)).ok
        assert (await node_health(c, t1))["revision"] == revision
