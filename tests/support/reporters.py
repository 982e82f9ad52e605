"""A client reporter for tests: keeps every event, and checks each is a known one."""

from __future__ import annotations

from typing import Any

from atlas.clients.report import EVENTS


class ListReporter:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event: str, **fields: Any) -> None:
        assert event in EVENTS, event
        self.events.append((event, fields))

    def close(self) -> None:
        pass

    def of(self, event: str) -> list[dict[str, Any]]:
        """The fields of every ``event`` reported, in order."""
        return [f for e, f in self.events if e == event]
