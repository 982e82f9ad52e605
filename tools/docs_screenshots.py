"""The screenshots in docs/images, taken from a running ``atlas demo``.

::

    atlas demo --sessions 2 &                # or make demo ARGS="--sessions 2"
    .venv/bin/python tools/docs_screenshots.py [--dir .atlas-demo] [--out docs/images]

Drives Debian's Chromium (``/usr/bin/chromium``) with Playwright, as the browser tests
do: the demo CA is trusted through an NSS database in a private ``HOME`` (``certutil``,
Debian package libnss3-tools; without it the site certificate's key is pinned), and the
site name is mapped to master1 with ``--host-resolver-rules``. It logs in as the demo's
admin and writes:

* ``status.png`` — Status → Information on master1, once the Connected Clients list
  shows every client of the demo's session pairs;
* ``cluster.png`` (the whole page), ``cluster-status.png`` and
  ``cluster-traffic-nodes.png`` (its panels) — Management → Cluster, showing the
  demo's own Sync Now (take them before anyone syncs again, for a short history);
* ``security.png`` — Management → Security.

The PNGs are reduced to 256 colours, as the pages have few.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from PIL import Image
from playwright.sync_api import FloatRect, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
BASE_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1440, "height": 900}
PANEL_MARGIN = 16
CLIENTS_TIMEOUT = 90.0


def trust_args(ca_file: Path, cert_file: Path,
               home: Path) -> tuple[list[str], dict[str, str | float | bool]]:
    """Chromium arguments and environment that make it trust the demo's certificate."""
    env: dict[str, str | float | bool] = {**os.environ, "HOME": str(home)}
    certutil = shutil.which("certutil")
    if certutil:
        db = f"sql:{home / '.pki' / 'nssdb'}"
        (home / ".pki" / "nssdb").mkdir(parents=True)
        subprocess.run([certutil, "-d", db, "-N", "--empty-password"], check=True)
        subprocess.run([certutil, "-d", db, "-A", "-t", "C,,", "-n", "atlas-demo", "-i",
                        str(ca_file)], check=True)
        return [], env
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return [f"--ignore-certificate-errors-spki-list={pin}"], env


def save(png: bytes, path: Path) -> None:
    tmp = path.with_suffix(".tmp.png")
    tmp.write_bytes(png)
    with Image.open(tmp) as image:
        image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    tmp.unlink()
    print(f"wrote {path}")


def panel(page: Page, selector: str, path: Path) -> None:
    """One panel of the page, with a little of the page around it (and whatever of its
    content sticks out of it, as a browser shows it)."""
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    right = max([box["x"] + box["width"]] + [
        b["x"] + b["width"] for b in (page.locator(f"{selector} table").nth(i).bounding_box()
                                      for i in range(page.locator(f"{selector} table").count()))
        if b is not None])
    box = {**box, "width": right - box["x"]}
    size = page.evaluate("[document.documentElement.scrollWidth, "
                         "document.documentElement.scrollHeight]")
    x, y = max(box["x"] - PANEL_MARGIN, 0), max(box["y"] - PANEL_MARGIN, 0)
    clip: FloatRect = {"x": x, "y": y,
                       "width": min(box["width"] + 2 * PANEL_MARGIN, size[0] - x),
                       "height": min(box["height"] + 2 * PANEL_MARGIN, size[1] - y)}
    save(page.screenshot(clip=clip, full_page=True), path)


def wait_for_clients(page: Page, url: str, count: int) -> None:
    """Reload Status → Information until it lists ``count`` connected clients."""
    deadline = time.monotonic() + CLIENTS_TIMEOUT
    while True:
        page.goto(url)
        rows = page.locator("table tbody tr").filter(has_text="support customer").count()
        rows += page.locator("table tbody tr").filter(has_text="representative").count()
        if rows >= count:
            return
        if time.monotonic() > deadline:
            sys.exit(f"Status → Information lists {rows} clients, not {count}, after "
                     f"{CLIENTS_TIMEOUT:g} s: is the demo running with --sessions?")
        time.sleep(2.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(".atlas-demo"),
                        help="the running demo's directory")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    info: dict[str, Any] = json.loads((args.dir / "demo.json").read_text())
    if info["state"] != "running":
        sys.exit(f"the demo in {args.dir} is {info['state']}: start it with "
                 "`atlas demo --sessions 2`")
    site, port = info["site"], info["port"]
    primary = next(n for n in info["nodes"] if n["role"] == "primary")
    base = f"https://{site}:{port}"
    clients = 2 * len(info.get("sessions", []))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="atlas-shots-") as home:
        trust, env = trust_args(Path(info["ca_file"]), args.dir / "tls" / "site-cert.pem",
                                Path(home))
        rules = f"--host-resolver-rules=MAP {site} {primary['listen_ip']}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM,
                                         args=[*BASE_ARGS, *trust, rules], env=env)
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.goto(f"{base}/login")
            page.fill("#f-username", info["admin"]["username"])
            page.fill("#f-password", info["admin"]["password"])
            page.click("button:has-text('Log in')")
            page.wait_for_load_state()

            status_url = f"{base}/login/status/information"
            if clients:
                wait_for_clients(page, status_url, clients)
            else:
                page.goto(status_url)
            save(page.screenshot(full_page=True), args.out / "status.png")

            page.goto(f"{base}/login/management/cluster")  # after the demo's Sync Now
            page.locator("#sync-summary", has_text="finished").wait_for(timeout=10_000)
            save(page.screenshot(full_page=True), args.out / "cluster.png")
            panel(page, "#cluster-status", args.out / "cluster-status.png")
            panel(page, "#traffic-nodes", args.out / "cluster-traffic-nodes.png")

            page.goto(f"{base}/login/management/security")
            save(page.screenshot(), args.out / "security.png")
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
