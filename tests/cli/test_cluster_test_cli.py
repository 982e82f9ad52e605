"""``atlas cluster test``: its options and failures, against a real served node.

A whole cluster test (real sessions on a six-node cluster, every selection method) is in
tests/integration/test_cluster_test.py; here one standalone node answers, which is
enough for everything that must stop before a probe runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from atlas.cli import app
from tests.cli.test_cluster_cli import account
from tests.conftest import RunningNode, free_port

runner = CliRunner()

PLAN = """representative = "test-rep"
[[probe]]
name = "us-customer"
source_address = "127.10.0.5"
tz_offset = "-05:00"
"""


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(PLAN)
    return path


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    r = runner.invoke(app, ["cluster", "test", *args], env=env)
    return r.exit_code, r.output


@pytest.fixture
def env(running_node: RunningNode) -> dict[str, str]:
    return {"ATLAS_URL": running_node.url, "ATLAS_CA_FILE": str(running_node.ca_file),
            "ATLAS_REP_PASSWORD": "not-used-here", "ATLAS_DNS": "",
            **account(running_node.data_dir)}


def test_a_standalone_node_is_not_tested(env: dict[str, str], plan: Path) -> None:
    code, output = run(env, str(plan))
    assert code == 2, output
    assert "is not a primary master node (it is standalone)" in output


def test_bad_plans_and_options(env: dict[str, str], plan: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[probe]]\nname = "x"\nsource_address = "nowhere"\n')
    code, output = run(env, str(bad))
    assert code == 2 and "is not usable" in output
    assert "probe 1 ('x'): source_address: 'nowhere' is not an IP address" in output

    code, output = run(env, str(tmp_path / "missing.toml"))
    assert code == 2 and "cannot read it" in output

    code, output = run(env, str(plan), "--probe", "asia-rep")
    assert code == 2 and "--probe asia-rep: not in the plan (it has us-customer)" in output

    code, output = run(env, str(plan), "--dns", "not a server")
    assert code == 2 and "--dns 'not a server'" in output

    no_rep = tmp_path / "no-rep.toml"
    no_rep.write_text(PLAN.replace('representative = "test-rep"\n', ""))
    code, output = run(env, str(no_rep))
    assert code == 2 and "no test representative" in output

    code, output = run({**env, "ATLAS_REP_PASSWORD": ""}, str(plan))
    assert code == 2
    assert "the test representative 'test-rep': no password: set $ATLAS_REP_PASSWORD" in output

    code, output = run({**env, "ATLAS_URL": ""}, str(plan))
    assert code == 2 and "missing --url" in output


def test_refused_account_and_unreachable_site(env: dict[str, str], plan: Path) -> None:
    code, output = run({**env, "ATLAS_CLIENT_SECRET": "wrong"}, str(plan))
    assert code == 3, output
    assert "was refused" in output
    code, output = run({**env, "ATLAS_URL": f"https://127.0.0.1:{free_port()}"}, str(plan))
    assert code == 5, output
    assert "unreachable" in output


def test_the_plans_url_is_used_without_an_option(env: dict[str, str], tmp_path: Path,
                                                 running_node: RunningNode) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(f'url = "{running_node.url}"\n' + PLAN)
    code, output = run({**env, "ATLAS_URL": ""}, str(path))
    assert code == 2 and "is not a primary master node" in output  # it got that far
