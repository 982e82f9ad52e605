"""The demo's working directory, lock and process bookkeeping, without starting nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atlas.demo import processes
from atlas.demo.cluster import (
    DemoError,
    DemoOptions,
    DemoPaths,
    UsageProblem,
    check_directory,
    prepare,
    stop_demo,
    stop_leftovers,
)
from atlas.demo.processes import DemoLock
from atlas.demo.state import load_info, save_info
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
