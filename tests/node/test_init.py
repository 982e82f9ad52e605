"""``atlas init``: every option, good and bad; nothing written on refusal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atlas.cli import app
from atlas.net import certs
from atlas.node.datadir import DataDir
from atlas.store.admins import get_admin
from atlas.store.db import Database
from atlas.store.passwords import verify_password

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_init_creates_a_complete_node(tmp_path: Path) -> None:
    d = tmp_path / "n"
    code, out = run("init", str(d), "--name", "master1", "--public", "localhost:8443",
                    "--listen", "127.0.0.1")
    assert code == 0, out
    assert "admin password" in out and "shown once" in out
    ident = json.loads((d / "node.json").read_text())
    assert ident["name"] == "master1" and ident["public"] == "localhost:8443"
    assert ident["internal"] == "localhost:8443" and len(ident["guid"]) == 32
    dd = DataDir(d)
    assert (dd.key_file.stat().st_mode & 0o077) == 0
    assert (dd.db_file.stat().st_mode & 0o077) == 0
    assert (d.stat().st_mode & 0o077) == 0
    certs.check_pair(dd.cert_file.read_bytes(), dd.key_file.read_bytes(), "localhost")
    password = out.split("admin password")[1].split()[0]
    db = Database(dd.db_file)
    admin = get_admin(db, "admin")
    assert admin is not None and verify_password(admin.password_hash, password)


def test_init_with_given_password_does_not_print_it(tmp_path: Path) -> None:
    code, out = run("init", str(tmp_path / "n"), "--name", "a", "--public", "localhost:8443",
                    "--listen", "127.0.0.1", "--admin-password", "correct horse battery")
    assert code == 0, out
    assert "correct horse battery" not in out


def test_init_takes_the_admin_password_from_the_environment(tmp_path: Path) -> None:
    r = runner.invoke(app, ["init", str(tmp_path / "n"), "--name", "a", "--public",
                            "localhost:8443", "--listen", "127.0.0.1"],
                      env={"ATLAS_ADMIN_PASSWORD": "correct horse battery"})
    assert r.exit_code == 0, r.output
    assert "correct horse battery" not in r.output and "admin password" not in r.output
    db = Database(DataDir(tmp_path / "n").db_file)
    try:
        admin = get_admin(db, "admin")
        assert admin is not None
        assert verify_password(admin.password_hash, "correct horse battery")
    finally:
        db.close()


def test_an_ip_address_works_alone_with_a_warning(tmp_path: Path) -> None:
    r = runner.invoke(app, ["init", str(tmp_path / "n"), "--name", "a", "--public",
                            "127.0.0.1:8443", "--internal", "[::1]:9443"])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "warning: --public 127.0.0.1 is an IP address: the node works on its own" in flat
    assert "warning: --internal ::1 is an IP address" in flat
    r = runner.invoke(app, ["init", str(tmp_path / "h"), "--name", "h", "--public",
                            "localhost:8443"])
    assert r.exit_code == 0 and "warning" not in r.output


def test_init_with_ca_dir_and_internal_address(tmp_path: Path) -> None:
    certs.create_ca_dir(tmp_path / "ca")
    code, out = run("init", str(tmp_path / "n"), "--name", "us-traffic1",
                    "--public", "us1.support.example.test:443",
                    "--internal", "us1-int.support.example.test:8443",
                    "--listen", "127.0.0.1", "--ca-dir", str(tmp_path / "ca"))
    assert code == 0, out
    dd = DataDir(tmp_path / "n")
    cert = certs.check_pair(dd.cert_file.read_bytes(), dd.key_file.read_bytes())
    assert certs.covers(cert, "us1.support.example.test")
    assert certs.covers(cert, "us1-int.support.example.test")
    assert dd.ca_file.read_bytes() == (tmp_path / "ca" / "ca.pem").read_bytes()


def test_init_with_cert_and_key(tmp_path: Path) -> None:
    ca = certs.create_ca()
    pair = certs.issue(ca, ["*.support.example.test"])
    (tmp_path / "c.pem").write_bytes(pair.cert_pem)
    (tmp_path / "k.pem").write_bytes(pair.key_pem)
    code, out = run("init", str(tmp_path / "n"), "--name", "a",
                    "--public", "m1.support.example.test:443", "--listen", "127.0.0.1",
                    "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem"))
    assert code == 0, out


def _bad_cert_files(tmp_path: Path) -> dict[str, Path]:
    ca = certs.create_ca()
    a = certs.issue(ca, ["a.example.test"])
    b = certs.issue(ca, ["b.example.test"])
    files = {"a_pem": a.cert_pem, "a_key": a.key_pem, "b_key": b.key_pem, "junk_pem": b"junk"}
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--name", "", "--public", "localhost:1"], "name must not be empty"),
        (["--name", "x" * 65, "--public", "localhost:1"], "at most 64 characters"),
        (["--name", "a\x07b", "--public", "localhost:1"], "control characters"),
        (["--name", "a", "--public", "localhost"], "a port is required"),
        (["--name", "a", "--public", "localhost:0"], "between 1 and 65535"),
        (["--name", "a", "--public", "localhost:70000"], "between 1 and 65535"),
        (["--name", "a", "--public", "localhost:http"], "is not a number"),
        (["--name", "a", "--public", ":443"], "host part is empty"),
        (["--name", "a", "--public", "fe80::1:443"], "IPv6 address as"),
        (["--name", "a", "--public", "localhost:1", "--internal", "x:"], "a port is required"),
        (["--name", "a", "--public", "localhost:1", "--listen", "not-an-ip"], "not an IP address"),
        (["--name", "a", "--public", "no-such-host.invalid:1"], "does not resolve"),
        (["--name", "a", "--public", "localhost:1", "--admin-password", "short"],
         "at least 8 characters"),
        (["--name", "a", "--public", "localhost:1", "--cert", "{a_pem}"], "go together"),
        (["--name", "a", "--public", "a.example.test:1", "--listen", "127.0.0.1",
          "--cert", "{a_pem}", "--key", "{b_key}"], "does not match the private key"),
        (["--name", "a", "--public", "b.example.test:1", "--listen", "127.0.0.1",
          "--cert", "{a_pem}", "--key", "{a_key}"], "does not cover 'b.example.test'"),
        (["--name", "a", "--public", "a.example.test:1", "--listen", "127.0.0.1",
          "--cert", "{junk_pem}", "--key", "{a_key}"], "not a PEM X.509 certificate"),
        (["--name", "a", "--public", "a.example.test:1", "--listen", "127.0.0.1",
          "--cert", "{missing_pem}", "--key", "{a_key}"], "cannot read the certificate"),
        (["--name", "a", "--public", "localhost:1", "--ca-dir", "{nodir}"], "cannot read the CA"),
    ],
)
def test_init_refuses_bad_arguments(tmp_path: Path, args: list[str], problem: str) -> None:
    files = _bad_cert_files(tmp_path)
    files["missing_pem"] = tmp_path / "missing.pem"
    files["nodir"] = tmp_path / "nodir"
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    target = tmp_path / "node"
    code, out = run("init", str(target), *args)
    assert code == 2
    assert problem in out, out
    assert not target.exists(), "nothing may be written on refusal"


def test_init_refuses_existing_node_and_leaves_it_alone(tmp_path: Path) -> None:
    d = tmp_path / "n"
    assert run("init", str(d), "--name", "a", "--public", "localhost:1", "--listen",
               "127.0.0.1")[0] == 0
    before = (d / "node.json").read_bytes()
    code, out = run("init", str(d), "--name", "b", "--public", "localhost:2", "--listen",
                    "127.0.0.1")
    assert code == 2 and "already holds an Atlas node" in out
    assert (d / "node.json").read_bytes() == before


def test_init_refuses_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "keep.txt").write_text("mine")
    code, out = run("init", str(tmp_path / "n"), "--name", "a", "--public", "localhost:1",
                    "--listen", "127.0.0.1")
    assert code == 2 and "not empty" in out
    assert os.listdir(tmp_path / "n") == ["keep.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_init_refuses_unwritable_dir(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    code, out = run("init", str(ro / "n"), "--name", "a", "--public", "localhost:1",
                    "--listen", "127.0.0.1")
    assert code == 2 and "cannot write" in out


def test_init_refuses_unwritable_path(tmp_path: Path) -> None:
    """A path under a regular file cannot be created, even by root."""
    (tmp_path / "file").write_text("x")
    code, out = run("init", str(tmp_path / "file" / "n"), "--name", "a", "--public",
                    "localhost:1", "--listen", "127.0.0.1")
    assert code == 2 and "cannot write" in out
