"""A node's data directory: identity, TLS material, database, secrets.

Layout::

    DATA_DIR/node.json        identity: appliance GUID, name, addresses, listen IP
    DATA_DIR/tls/cert.pem     the node's certificate (chain)
    DATA_DIR/tls/key.pem      its private key (0600)
    DATA_DIR/tls/ca.pem       CA bundle trusted for node-to-node TLS (optional)
    DATA_DIR/atlas.db         SQLite database (0600)
    DATA_DIR/secrets/         PSK and signing keys (0700 directory, 0600 files)
    DATA_DIR/atlas.pid        pid of the running ``atlas serve``
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from atlas.net.certs import write_private


class DataDirError(ValueError):
    """The data directory is missing, unreadable or not an Atlas node."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> HostPort:
        """Parse ``host:port`` (``[v6]:port`` for IPv6); a clear ``ValueError`` otherwise."""
        t = text.strip()
        if not t:
            raise ValueError("an address is required, as host:port")
        if t.startswith("["):
            end = t.find("]")
            if end < 0:
                raise ValueError(f"{text!r}: missing ']' after an IPv6 address")
            host, rest = t[1:end], t[end + 1 :]
            port_text = rest[1:] if rest.startswith(":") else None
            if rest and not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':port' after ']'")
        elif t.count(":") == 1:
            host, port_text = t.split(":")
        elif ":" in t:
            raise ValueError(f"{text!r}: write an IPv6 address as [addr]:port")
        else:
            host, port_text = t, None
        if not host:
            raise ValueError(f"{text!r}: the host part is empty")
        if port_text is None or port_text == "":
            if default_port is None:
                raise ValueError(f"{text!r}: a port is required, as host:port")
            port = default_port
        else:
            if not port_text.isdigit():
                raise ValueError(f"{text!r}: the port {port_text!r} is not a number")
            port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: the port must be between 1 and 65535")
        return cls(host.lower(), port)


@dataclass(frozen=True)
class Identity:
    guid: str
    name: str
    public: HostPort
    internal: HostPort
    listen: str  # local IP to bind
    created_at: float

    def to_json(self) -> str:
        d = asdict(self)
        d["public"] = str(self.public)
        d["internal"] = str(self.internal)
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Identity:
        d = json.loads(text)
        return cls(
            guid=str(d["guid"]),
            name=str(d["name"]),
            public=HostPort.parse(d["public"]),
            internal=HostPort.parse(d["internal"]),
            listen=str(d["listen"]),
            created_at=float(d["created_at"]),
        )


class DataDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def identity_file(self) -> Path:
        return self.root / "node.json"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def cert_file(self) -> Path:
        return self.root / "tls" / "cert.pem"

    @property
    def key_file(self) -> Path:
        return self.root / "tls" / "key.pem"

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "ca.pem"

    @property
    def db_file(self) -> Path:
        return self.root / "atlas.db"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def psk_file(self) -> Path:
        return self.root / "secrets" / "psk"

    @property
    def pid_file(self) -> Path:
        return self.root / "atlas.pid"

    def exists(self) -> bool:
        return self.identity_file.exists()

    def load_identity(self) -> Identity:
        try:
            return Identity.from_json(self.identity_file.read_text())
        except FileNotFoundError as exc:
            raise DataDirError(
                f"{self.root} is not an Atlas node (no node.json); run `atlas init` first"
            ) from exc
        except (OSError, ValueError, KeyError) as exc:
            raise DataDirError(f"{self.identity_file} is unreadable: {exc}") from exc

    def save_identity(self, identity: Identity) -> None:
        tmp = self.identity_file.with_suffix(".tmp")
        tmp.write_text(identity.to_json())
        os.replace(tmp, self.identity_file)

    def read_secret(self, name: str) -> bytes | None:
        try:
            return (self.secrets_dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def write_secret(self, name: str, data: bytes) -> None:
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.secrets_dir / name
        tmp = path.with_suffix(".tmp")
        write_private(tmp, data)
        os.replace(tmp, path)
