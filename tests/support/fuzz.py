"""schemathesis settings shared by every fuzz run of /api/v1."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def schemathesis_exe() -> str:
    exe = Path(sys.executable).with_name("schemathesis")
    found = str(exe) if exe.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.skip("schemathesis is not installed")
    return found


def schemathesis_config(directory: Path) -> Path:
    """Statuses the HTTP RFCs and our API prescribe that schemathesis does not expect:

    * a schema-valid body can still break a rule the schema cannot say (a hostname that
      is an IP address or empty, a name already taken, a cluster that no longer exists):
      404, 409, 422;
    * a stale If-Match is 412 (RFC 9110 §13.1.1), a missing one 428 (RFC 6585 §3).

    Runs also exclude ``negative_data_rejection``: the configuration model deliberately
    takes ``"host:port"`` text where the schema shows an address object, as the TOML
    file and the forms do.
    """
    path = directory / "schemathesis.toml"
    path.write_text(
        '[checks.positive_data_acceptance]\n'
        'expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "412", "422", "429"]\n'
        '[checks.missing_required_header]\n'
        'expected-statuses = ["400", "401", "403", "406", "415", "422", "428"]\n'
    )
    return path
