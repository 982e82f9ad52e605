"""Real Chromium (Debian's /usr/bin/chromium) driven by Playwright, trusting a node's CA.

How the browser trusts the node's certificate: each browser gets its own ``HOME`` with an
NSS database (``$HOME/.pki/nssdb``, where Chromium on Linux looks for locally trusted
roots) holding the node's CA, added with ``certutil`` (Debian package libnss3-tools). The
browser then verifies the chain and the hostname exactly as for a public site; nothing is
ignored. Without ``certutil`` the fallback is Chromium's
``--ignore-certificate-errors-spki-list`` pinned to the node certificate's own key (the
SHA-256 of its SubjectPublicKeyInfo), which accepts that one key and nothing else.

``page.request`` (Playwright's own HTTP client, in its Node.js driver, not the browser)
trusts the CA of the first node a test launches a browser for, through
``NODE_EXTRA_CA_CERTS`` given to the driver when it starts.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMIUM = "/usr/bin/chromium"
BASE_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

playwright_sync = pytest.importorskip("playwright.sync_api")


@dataclass(frozen=True)
class Trust:
    """How a browser is made to trust one node: extra launch args and environment."""

    mode: str  # "nss" (the CA is a trusted root) or "spki" (the node's key is pinned)
    args: list[str]
    env: dict[str, str]


def spki_pin(cert_file: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in ``cert_file``."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def trust_node(data_dir: Path, home: Path) -> Trust:
    ca_file = data_dir / "tls" / "ca.pem"
    certutil = shutil.which("certutil")
    if certutil:
        nssdb = home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True, exist_ok=True)
        db = f"sql:{nssdb}"
        subprocess.run([certutil, "-d", db, "-N", "--empty-password"], check=True)
        subprocess.run(
            [certutil, "-d", db, "-A", "-t", "C,,", "-n", "atlas-test-ca", "-i", str(ca_file)],
            check=True,
        )
        env = {**os.environ, "HOME": str(home)}
        return Trust("nss", [], env)
    pin = spki_pin(data_dir / "tls" / "cert.pem")
    return Trust("spki", [f"--ignore-certificate-errors-spki-list={pin}"], dict(os.environ))


@pytest.fixture
def chromium_for(tmp_path: Path) -> Iterator[Any]:
    """``chromium_for(data_dir) -> Browser`` trusting that node; all closed at teardown."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium")
    started: list[Any] = []
    browsers: list[Any] = []

    def launch(data_dir: Path, **kwargs: Any) -> Any:
        if not started:
            started.append(_start_playwright(data_dir / "tls" / "ca.pem"))
        pw = started[0]
        trust = trust_node(data_dir, tmp_path / f"browser-home-{len(browsers)}")
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=BASE_ARGS + trust.args, env=trust.env, **kwargs
        )
        browsers.append(browser)
        return browser

    try:
        yield launch
    finally:
        for b in browsers:
            b.close()
        for pw in started:
            pw.stop()


def _start_playwright(ca_file: Path) -> Any:
    """Start the Playwright driver with ``NODE_EXTRA_CA_CERTS`` set to ``ca_file``."""
    saved = os.environ.get("NODE_EXTRA_CA_CERTS")
    os.environ["NODE_EXTRA_CA_CERTS"] = str(ca_file)
    try:
        return playwright_sync.sync_playwright().start()
    finally:
        if saved is None:
            del os.environ["NODE_EXTRA_CA_CERTS"]
        else:
            os.environ["NODE_EXTRA_CA_CERTS"] = saved
