"""``atlas init``: create a node's data directory."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from atlas.net import certs
from atlas.node.datadir import DataDir, HostPort, Identity
from atlas.store.admins import create_admin
from atlas.store.db import Database
from atlas.store.passwords import password_problem

ADMIN_USERNAME = "admin"


class InitError(ValueError):
    """A reason ``atlas init`` refused to create the node; nothing was written."""


@dataclass(frozen=True)
class InitResult:
    identity: Identity
    admin_username: str
    admin_password: str
    password_generated: bool
    warnings: tuple[str, ...] = ()


def _check_name(name: str) -> str:
    n = name.strip()
    if not n:
        raise InitError("--name: the node name must not be empty")
    if len(n) > 64:
        raise InitError("--name: the node name must be at most 64 characters")
    if any(not ch.isprintable() for ch in n):
        raise InitError("--name: the node name must not contain control characters")
    return n


def _parse_address(option: str, text: str) -> HostPort:
    try:
        return HostPort.parse(text)
    except ValueError as exc:
        raise InitError(f"{option}: {exc}") from None


def _ip_warning(option: str, hp: HostPort) -> str | None:
    """The cluster configuration refuses IP addresses for nodes (each node has a
    canonical hostname its certificate covers): a node made with one works alone, but
    cannot be a member of a cluster under that address."""
    try:
        ipaddress.ip_address(hp.host)
    except ValueError:
        return None
    return (f"{option} {hp.host} is an IP address: the node works on its own, but a "
            "cluster refuses IP addresses for nodes — give it a canonical hostname "
            f"(e.g. master1.support.example.com:{hp.port}) before it joins one")


def _default_listen(public: HostPort) -> str:
    try:
        ipaddress.ip_address(public.host)
        return public.host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(public.host, public.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InitError(
            f"--listen: {public.host} does not resolve here ({exc.strerror}); "
            "give the local address to bind with --listen"
        ) from None
    return str(infos[0][4][0])


def init_node(
    root: Path,
    *,
    name: str,
    public: str,
    internal: str | None = None,
    listen: str | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    ca_dir: Path | None = None,
    trust: Path | None = None,
    admin_password: str | None = None,
) -> InitResult:
    """Create a node in ``root``. Every argument is checked before anything is written."""
    dd = DataDir(root)
    if dd.exists():
        raise InitError(f"{root} already holds an Atlas node; refusing to overwrite it")
    if root.exists() and any(root.iterdir()):
        raise InitError(f"{root} exists and is not empty; give an empty or new directory")
    node_name = _check_name(name)
    pub = _parse_address("--public", public)
    internal_hp = _parse_address("--internal", internal) if internal else pub
    if listen is not None:
        try:
            ipaddress.ip_address(listen)
        except ValueError:
            raise InitError(f"--listen: {listen!r} is not an IP address") from None
        listen_ip = listen
    else:
        listen_ip = _default_listen(pub)
    if admin_password is not None and (problem := password_problem(admin_password)):
        raise InitError(f"--admin-password: {problem}")

    # TLS material: given, or issued by a local CA.
    if (cert is None) != (key is None):
        raise InitError("--cert and --key go together: give both or neither")
    if cert is not None and ca_dir is not None:
        raise InitError("give either --cert/--key or --ca-dir, not both")
    if cert is not None and key is not None:
        try:
            cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
        except OSError as exc:
            raise InitError(f"cannot read the certificate or key: {exc}") from None
        try:
            certs.check_pair(cert_pem, key_pem, pub.host)
        except certs.CertificateError as exc:
            raise InitError(f"--cert/--key: {exc}") from None
        ca_pem = trust.read_bytes() if trust else None
    else:
        try:
            if ca_dir is None:
                ca = certs.create_ca(f"Atlas CA for {node_name}")
            else:
                ca = certs.load_ca_dir(ca_dir)
        except certs.CertificateError as exc:
            raise InitError(f"--ca-dir: {exc}") from None
        names = [pub.host] + ([internal_hp.host] if internal_hp.host != pub.host else [])
        pair = certs.issue(ca, names)
        cert_pem, key_pem, ca_pem = pair.cert_pem + ca.cert_pem, pair.key_pem, ca.cert_pem

    # Everything checked: write.
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        probe = root / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InitError(f"cannot write to {root}: {exc.strerror}") from None
    dd.tls_dir.mkdir(exist_ok=True)
    dd.cert_file.write_bytes(cert_pem)
    certs.write_private(dd.key_file, key_pem)
    if ca_pem:
        dd.ca_file.write_bytes(ca_pem)
    dd.secrets_dir.mkdir(mode=0o700, exist_ok=True)
    identity = Identity(
        guid=uuid.uuid4().hex,
        name=node_name,
        public=pub,
        internal=internal_hp,
        listen=listen_ip,
        created_at=time.time(),
    )
    db = Database(dd.db_file)
    generated = admin_password is None
    password = admin_password or secrets.token_urlsafe(12)
    try:
        create_admin(db, ADMIN_USERNAME, password)
    finally:
        db.close()
    dd.save_identity(identity)  # last: a node exists only once it is complete
    warnings = tuple(w for w in (_ip_warning("--public", pub),
                                 None if internal is None else
                                 _ip_warning("--internal", internal_hp)) if w)
    return InitResult(identity, ADMIN_USERNAME, password, generated, warnings)
