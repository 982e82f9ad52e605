"""Master fallback (design section 3, rule 4; guide: "master fallback client limit").

When no traffic node is viable the client uses the master as its home traffic node, but
only while fewer than ``master_fallback_limit`` clients are doing so; beyond it the
client is told that no traffic node is available and when to retry.

:class:`MasterFallback` is the only state in the selection: the set of clients currently
falling back. It is shared by everything that admits clients on the master (event loop
and worker threads alike), so every operation takes one lock and never blocks on
anything else inside it — safe to call from coroutines without awaiting.
"""

from __future__ import annotations

import threading

from atlas.selection.decision import (
    FallbackToMaster,
    FallbackWanted,
    NoneAvailable,
    Routing,
    Rule,
    Selection,
)


class MasterFallback:
    """The clients currently using the master as their traffic node, up to a limit.

    ``try_acquire`` and ``release`` are idempotent per client: a client that asks again
    while holding a place keeps it without taking a second one, and releasing a client
    that holds no place does nothing.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("master fallback limit must be >= 0")
        self._limit = limit
        self._clients: set[str] = set()
        self._peak = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def count(self) -> int:
        """Clients falling back right now."""
        return len(self._clients)

    @property
    def peak(self) -> int:
        """The most clients that ever fell back at once."""
        return self._peak

    def holds(self, client_id: str) -> bool:
        return client_id in self._clients

    def clients(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._clients)

    def try_acquire(self, client_id: str, limit: int | None = None) -> bool:
        """Take a place for ``client_id``; ``False`` when ``limit`` clients hold one.

        ``limit`` (the configuration's current value) replaces the stored one, so a
        changed setting applies from the next request. Lowering it below the current
        count evicts nobody; new clients wait until enough have left.
        """
        with self._lock:
            if limit is not None:
                if limit < 0:
                    raise ValueError("master fallback limit must be >= 0")
                self._limit = limit
            if client_id in self._clients:
                return True
            if len(self._clients) >= self._limit:
                return False
            self._clients.add(client_id)
            self._peak = max(self._peak, len(self._clients))
            return True

    def release(self, client_id: str) -> None:
        """The client left (or moved to a traffic node): free its place."""
        with self._lock:
            self._clients.discard(client_id)


def admit(
    selection: Selection,
    fallback: MasterFallback,
    client_id: str,
    *,
    retry_after_seconds: int | None = None,
) -> Routing:
    """Apply the master fallback limit to a selection; anything else passes through.

    The client must :meth:`MasterFallback.release` its place when it disconnects or
    gets a traffic node.
    """
    if not isinstance(selection, FallbackWanted):
        return selection
    if fallback.try_acquire(client_id, selection.limit):
        return FallbackToMaster(
            rule=Rule.FALLBACK,
            reason=f"{selection.reason}; using the master "
            f"({fallback.count} of {selection.limit} fallback places taken)",
            host=selection.host,
            port=selection.port,
            client_id=client_id,
        )
    retry = selection.retry_after_seconds if retry_after_seconds is None else retry_after_seconds
    return NoneAvailable(
        rule=Rule.NONE,
        reason=f"no traffic node available (master fallback limit {selection.limit} "
        f"reached); retry in {retry} s — {selection.reason}",
        retry_after_seconds=retry,
    )
