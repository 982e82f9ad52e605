"""``atlas demo`` (first stage): one standalone node with a generated certificate.

Creates (or reuses) a node in the demo directory, serves it, and prints the ``/login``
URL and admin credentials. The local-cluster issue grows this into the whole cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from atlas.net.certs import write_private
from atlas.node.init import init_node
from atlas.node.runtime import Node
from atlas.node.server import serve

DEMO_FILE = "demo.json"


@dataclass(frozen=True)
class DemoInfo:
    url: str
    ca_file: str
    admin_username: str
    admin_password: str
    data_dir: str


def prepare(
    root: Path, host: str = "localhost", port: int = 8443, listen: str = "127.0.0.1"
) -> DemoInfo:
    """Create the demo node once; later runs reuse it and its credentials."""
    info_file = root / DEMO_FILE
    if info_file.exists():
        d = json.loads(info_file.read_text())
        return DemoInfo(**d)
    node_dir = root / "master1"
    result = init_node(node_dir, name="master1", public=f"{host}:{port}", listen=listen)
    info = DemoInfo(
        url=f"https://{host}:{port}/login",
        ca_file=str((node_dir / "tls" / "ca.pem").resolve()),
        admin_username=result.admin_username,
        admin_password=result.admin_password,
        data_dir=str(node_dir.resolve()),
    )
    root.mkdir(parents=True, exist_ok=True)
    write_private(info_file, (json.dumps(info.__dict__, indent=2) + "\n").encode())
    return info


def run(root: Path, say: Callable[[str], None] = print) -> None:
    info = prepare(root)

    def ready(_node: Node) -> None:
        say("")
        say("Atlas is running (standalone node).")
        say(f"  /login     {info.url}")
        say(f"  user       {info.admin_username}")
        say(f"  password   {info.admin_password}")
        say(f"  CA file    {info.ca_file}  (trust it, or accept the browser's warning)")
        say(f"  data dir   {info.data_dir}")
        say("Press Ctrl-C to stop.")

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(serve(Path(info.data_dir), on_ready=ready))
