"""One TLS read buffer per thread instead of one per connection (asyncio's TLS transport).

asyncio's ``SSLProtocol`` (CPython 3.11–3.13) gives every TLS connection its own
256 KiB ``bytearray`` to receive raw TLS bytes into (``max_size``), zero-filled, so the
whole of it is resident: 256 KiB per idle client, more than everything else a client
costs the master together (``bench/master_clients.py``, docs/performance.md "Master:
online clients"). The buffer never holds data across an event-loop iteration:
``get_buffer()`` hands it to ``recv_into`` and ``buffer_updated()`` copies what arrived
into the connection's ``MemoryBIO`` at once. So one buffer per thread (an event loop
runs in one thread) serves every connection of that loop, with the same read size.

:func:`share_tls_read_buffers` patches ``SSLProtocol`` in place (idempotent); the
connections created afterwards share their thread's buffer. Selector event loops only
(``recv_into`` and ``buffer_updated`` run in one callback); nothing changes on Windows
(proactor loops read into the buffer across iterations) or for event loops with their
own TLS implementation (uvloop).
"""

from __future__ import annotations

import asyncio.sslproto
import functools
import sys
import threading
from typing import Any, Final

_MARK: Final = "_atlas_shared_read_buffer"
_local = threading.local()


def shared_read_buffer(size: int) -> memoryview:
    """This thread's read buffer (at least ``size`` bytes), for a protocol that copies
    what a read put there before it returns (as asyncio's TLS transport does into its
    ``MemoryBIO``), so every connection of the event loop can share it."""
    return _shared(size)[1][:size]


def _shared(size: int) -> tuple[bytearray, memoryview]:
    buffer: bytearray | None = getattr(_local, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = bytearray(size)
        _local.buffer = buffer
        _local.view = memoryview(buffer)
    view: memoryview = _local.view
    return buffer, view


def share_tls_read_buffers() -> bool:
    """Make asyncio's TLS connections share one read buffer per thread; ``False`` if the
    running Python's ``SSLProtocol`` does not look as expected (left untouched)."""
    if sys.platform == "win32":  # proactor loops keep the buffer across iterations
        return False
    cls: Any = getattr(asyncio.sslproto, "SSLProtocol", None)
    if cls is None or getattr(cls, _MARK, False):
        return bool(cls is not None)
    if not isinstance(getattr(cls, "max_size", None), int) or not hasattr(cls, "get_buffer"):
        return False
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._ssl_buffer, self._ssl_buffer_view = _shared(self.max_size)

    def get_buffer(self: Any, n: int) -> memoryview:
        want = n if 0 < n <= self.max_size else self.max_size
        self._ssl_buffer, self._ssl_buffer_view = _shared(want)
        view: memoryview = self._ssl_buffer_view
        return view

    cls.__init__ = __init__
    cls.get_buffer = get_buffer
    setattr(cls, _MARK, True)
    return True


__all__ = ["share_tls_read_buffers", "shared_read_buffer"]
