"""``atlas demo set-method`` without a cluster: which demo it acts on, what it refuses,
and how its record in demo.json survives the running demo's own writes. (Switching a
running demo is in tests/integration/test_demo.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atlas.cli import app
from atlas.demo.cluster import DemoCluster, DemoOptions, DemoPaths, prepare
from atlas.demo.errors import NotRunning, UsageProblem
from atlas.demo.layout import method_choice
from atlas.demo.set_method import demo_layout, running_info, set_method
from atlas.demo.state import DemoInfo, load_info, save_info, update_info


def quiet(_: str) -> None:
    return None


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> DemoPaths:
    paths = DemoPaths.at(tmp_path_factory.mktemp("set-method") / "demo")
    prepare(paths, DemoOptions(root=paths.root), quiet)
    return paths


@pytest.fixture
def demo_dir(prepared: DemoPaths, tmp_path: Path) -> DemoPaths:
    """A copy of the prepared demo's demo.json (all set-method reads before it acts)."""
    paths = DemoPaths.at(tmp_path / "demo")
    paths.root.mkdir()
    shutil.copy(prepared.demo_file, paths.demo_file)
    return paths


@contextmanager
def lock_held(paths: DemoPaths) -> Iterator[None]:
    """The directory's lock, held by another process as a running demo holds it."""
    code = ("import sys; from pathlib import Path; from atlas.demo.processes import DemoLock;"
            f"assert DemoLock(Path({str(paths.lock_file)!r})).acquire(); print('held', "
            "flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("", timeout=10)


def test_no_demo_there_is_exit_code_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "set-method", "timezone", "--dir",
                                      str(tmp_path / "none")])
    assert result.exit_code == 2, result.output
    assert "no demo in" in result.output and "atlas demo --dir" in result.output


def test_a_stopped_demo_is_not_changed(demo_dir: DemoPaths) -> None:
    with pytest.raises(NotRunning, match="no demo is running") as caught:
        set_method(demo_dir.root, "timezone", None, quiet)
    assert caught.value.exit_code == 2
    result = CliRunner().invoke(app, ["demo", "set-method", "srv", "--dir", str(demo_dir.root)])
    assert result.exit_code == 2 and "no demo is running" in result.output


def test_a_starting_demo_is_not_changed_yet(demo_dir: DemoPaths) -> None:
    info = load_info(demo_dir.demo_file)
    info.state = "starting"
    save_info(demo_dir.demo_file, info)
    with lock_held(demo_dir):
        with pytest.raises(NotRunning, match="is starting"):
            running_info(demo_dir)
        info.state = "running"
        save_info(demo_dir.demo_file, info)
        assert running_info(demo_dir).state == "running"


def test_an_unknown_method_is_a_usage_error(demo_dir: DemoPaths) -> None:
    with pytest.raises(UsageProblem, match="expected one of"):
        set_method(demo_dir.root, "nearest", None, quiet)
    result = CliRunner().invoke(app, ["demo", "set-method", "nearest", "--dir",
                                      str(demo_dir.root)])
    assert result.exit_code == 2


def test_the_layout_is_the_running_demos(demo_dir: DemoPaths) -> None:
    info = load_info(demo_dir.demo_file)
    info.dns.port, info.port = 40053, 9443
    layout = demo_layout(info)
    assert layout.dns == f"{info.dns.host}:40053"
    assert layout.site_url == f"https://{info.site}:9443"
    assert {n.name for n in layout.nodes} == {n.name for n in info.nodes}


def test_the_running_demo_keeps_what_set_method_recorded(demo_dir: DemoPaths) -> None:
    info = load_info(demo_dir.demo_file)
    layout = demo_layout(info)
    demo = DemoCluster(demo_dir, info, layout, method_choice("random"), quiet)
    info.state, info.method, info.prefixes = "running", "random", True
    demo._save()  # the demo's own write while it starts
    assert load_info(demo_dir.demo_file).method == "random"  # until running, its own
    demo._owns_method = False  # as start() leaves it

    def record(current: DemoInfo) -> None:
        current.method, current.prefixes, current.revision = "timezone", False, 11

    update_info(demo_dir.demo_file, record)  # `atlas demo set-method`
    info.state = "stopped"
    demo._save()  # the demo's write when it stops
    after = load_info(demo_dir.demo_file)
    assert (after.state, after.method, after.prefixes, after.revision) == (
        "stopped", "timezone", False, 11)
    assert demo.choice == method_choice("timezone")
