"""The demo's working directory, lock and process bookkeeping, without starting nodes."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from atlas.demo import processes
from atlas.demo.cluster import (
    DemoError,
    DemoOptions,
    DemoPaths,
    UsageProblem,
    check_directory,
    ensure_session_representatives,
    prepare,
    stop_demo,
    stop_leftovers,
    write_env,
    write_test_plan,
)
from atlas.demo.layout import method_choice
from atlas.demo.processes import DemoLock
from atlas.demo.state import SessionPairInfo, load_info, save_info
from atlas.node.datadir import DataDir
from atlas.store import representatives
from atlas.store.api_accounts import authenticate_client
from atlas.store.db import Database


def quiet(_: str) -> None:
    return None


def test_prepare_creates_everything_once_then_reuses_it(tmp_path: Path) -> None:
    paths = DemoPaths.at(tmp_path / "demo")
    info, layout = prepare(paths, DemoOptions(root=paths.root), quiet)
    assert (paths.demo_file.stat().st_mode & 0o777) == 0o600
    assert load_info(paths.demo_file) == info
    psks = set()
    for node in layout.nodes:
        dd = DataDir(paths.node_dir(node.name))
        ident = dd.load_identity()
        assert (ident.name, str(ident.public), ident.listen) == (
            node.name, node.public, node.listen_ip)
        assert dd.ca_file.read_bytes() == paths.ca_file.read_bytes()
        psks.add(dd.read_secret("psk"))
    assert len(psks) == 1 and None not in psks  # the same PSK everywhere
    db = Database(DataDir(paths.node_dir("master1")).db_file)
    try:
        acc = info.api_account
        assert authenticate_client(db, acc.client_id, acc.client_secret) is not None
        rep = info.representative
        assert representatives.get_by_username(db, rep.username) is not None
    finally:
        db.close()
    again, _ = prepare(paths, DemoOptions(root=paths.root), quiet)
    assert again == info
    with pytest.raises(UsageProblem, match="port 8443"):
        prepare(paths, DemoOptions(root=paths.root, port=9443), quiet)
    with pytest.raises(UsageProblem, match="support.example.test"):
        prepare(paths, DemoOptions(root=paths.root, site="other.example.test"), quiet)


def test_a_directory_that_is_not_a_demo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not an Atlas demo directory"):
        check_directory(DemoPaths.at(tmp_path))
    check_directory(DemoPaths.at(tmp_path / "new"))  # a new one is fine


def test_the_earlier_standalone_demo_is_named(tmp_path: Path) -> None:
    paths = DemoPaths.at(tmp_path)
    paths.demo_file.write_text('{"url": "https://localhost:8443/login"}')
    with pytest.raises(DemoError, match="earlier standalone demo"):
        prepare(paths, DemoOptions(root=tmp_path), quiet)


def test_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "demo.lock"
    code = (
        "import sys, time; from pathlib import Path; from atlas.demo.processes import DemoLock;"
        f"lock = DemoLock(Path({str(path)!r})); assert lock.acquire(); print('held', flush=True);"
        "sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        mine = DemoLock(path)
        assert mine.held_elsewhere()
        assert not mine.acquire()
        assert mine.holder() == holder.pid
    finally:
        holder.communicate("", timeout=10)
    assert not mine.held_elsewhere()
    assert mine.acquire()
    mine.release()


def test_leftover_processes_are_stopped_only_if_they_are_ours(tmp_path: Path) -> None:
    paths = DemoPaths.at(tmp_path / "demo")
    info, _ = prepare(paths, DemoOptions(root=paths.root), quiet)
    data_dir = info.nodes[0].data_dir
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", data_dir, "x"])
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info.nodes[0].pid, info.nodes[1].pid, info.state = ours.pid, stranger.pid, "running"
        save_info(paths.demo_file, info)
        assert stop_leftovers(paths) == [info.nodes[0].name]
        assert ours.wait(10) is not None
        assert stranger.poll() is None  # a recycled pid is left alone
        after = load_info(paths.demo_file)
        assert after.state == "stopped" and all(n.pid is None for n in after.nodes)
    finally:
        for p in (ours, stranger):
            p.kill()
            p.wait()


def test_stop_with_nothing_running_says_so(tmp_path: Path) -> None:
    paths = DemoPaths.at(tmp_path / "demo")
    prepare(paths, DemoOptions(root=paths.root), quiet)
    report = stop_demo(paths.root)
    assert not report.anything
    with pytest.raises(DemoError, match="no such directory"):
        stop_demo(tmp_path / "missing")


def test_alive_treats_exited_processes_as_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not processes.alive(proc.pid)
    assert processes.cmdline(proc.pid) is None


# ---- session representatives, the env file and the test plan ---------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> DemoPaths:
    """One demo directory for the tests below (making one takes seconds)."""
    paths = DemoPaths.at(tmp_path_factory.mktemp("prepared") / "demo")
    prepare(paths, DemoOptions(root=paths.root), quiet)
    return paths


def test_session_representatives_are_made_once_and_reused(prepared: DemoPaths) -> None:
    paths = prepared
    info, layout = prepare(paths, DemoOptions(root=paths.root), quiet)
    said: list[str] = []
    ensure_session_representatives(paths, info, layout, 2, said.append)
    assert [r.username for r in info.session_representatives] == ["sim-rep1", "sim-rep2"]
    assert said == ["Representative accounts for the session pairs: sim-rep1, sim-rep2"]
    assert load_info(paths.demo_file).session_representatives == info.session_representatives
    db = Database(DataDir(paths.node_dir("master1")).db_file)
    try:
        for r in info.session_representatives:
            assert representatives.authenticate(db, r.username, r.password, 0.0) is not None
    finally:
        db.close()

    again, _ = prepare(paths, DemoOptions(root=paths.root), quiet)
    ensure_session_representatives(paths, again, layout, 1, said.append)
    ensure_session_representatives(paths, again, layout, 3, said.append)
    assert again.session_representatives[:2] == info.session_representatives
    assert [r.username for r in again.session_representatives][2:] == ["sim-rep3"]
    assert said[1:] == ["Representative accounts for the session pairs: sim-rep3"]


def test_env_and_plan_carry_the_test_representative(prepared: DemoPaths) -> None:
    paths = prepared
    info, layout = prepare(paths, DemoOptions(root=paths.root), quiet)
    write_env(paths, layout, info)
    assert paths.env_file.stat().st_mode & 0o777 == 0o600
    env = subprocess.run(
        ["bash", "-c", f"source {paths.env_file} && env"], capture_output=True, text=True,
        check=True, env={"PATH": "/usr/bin:/bin"}).stdout.splitlines()
    values = dict(line.split("=", 1) for line in env if line.startswith("ATLAS_"))
    assert values["ATLAS_REP_USER"] == info.representative.username == "rep1"
    assert values["ATLAS_REP_PASSWORD"] == info.representative.password
    assert values["ATLAS_CLIENT_SECRET"] == info.api_account.client_secret
    assert set(values) == {"ATLAS_URL", "ATLAS_CLIENT_ID", "ATLAS_CLIENT_SECRET",
                           "ATLAS_CA_FILE", "ATLAS_DNS", "ATLAS_REP_USER",
                           "ATLAS_REP_PASSWORD"}

    write_test_plan(paths, layout, method_choice("srv"), info)
    plan = tomllib.loads(paths.plan_file.read_text())
    assert set(plan) == {"site", "url", "dns", "ca_file", "representative", "method",
                         "prefixes", "probe"}
    assert plan["representative"] == "rep1" and plan["ca_file"] == info.ca_file
    assert (plan["method"], plan["prefixes"]) == ("srv", False)
    assert {p["expected_rule"] for p in plan["probe"]} == {"srv"}
    assert set(plan["probe"][0]) == {"name", "kind", "region", "source_address", "tz_offset",
                                     "expected_nodes", "expected_rule"}
    assert "ATLAS_REP_PASSWORD" in paths.plan_file.read_text()  # the header says where
    assert info.representative.password not in paths.plan_file.read_text()


def test_the_plan_is_one_atlas_cluster_test_reads(prepared: DemoPaths) -> None:
    plan_module = pytest.importorskip("atlas.cluster_test.plan")
    paths = prepared
    info, layout = prepare(paths, DemoOptions(root=paths.root), quiet)
    write_test_plan(paths, layout, method_choice("timezone"), info)
    loaded = plan_module.load_plan(paths.plan_file)
    assert loaded.representative == "rep1"
    assert [p.name for p in loaded.probes] == ["us-customer", "us-rep", "asia-customer",
                                               "asia-rep"]


def test_leftover_session_clients_are_stopped_too(prepared: DemoPaths) -> None:
    info = load_info(prepared.demo_file)
    client = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               "--ca-file", info.ca_file, "--dns", "x"])
    try:
        info.state = "running"
        info.sessions = [SessionPairInfo(
            name="pair1", representative="sim-rep1", rep_region="us",
            rep_address="127.10.2.1", customer_region="asia", customer_address="127.20.1.1",
            rep_pid=None, customer_pid=client.pid, rep_log="r", customer_log="c")]
        save_info(prepared.demo_file, info)
        assert stop_leftovers(prepared) == ["pair1-customer"]
        assert client.wait(10) is not None
        assert load_info(prepared.demo_file).sessions == []
    finally:
        client.kill()
        client.wait()
