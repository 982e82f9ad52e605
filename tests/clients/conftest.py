"""Fixtures for the clients' tests: the real relay of ``tests/relay`` (TLS on 127.0.3.1)."""

from __future__ import annotations

from tests.relay.conftest import start_relay, tls

__all__ = ["start_relay", "tls"]
