"""The demo's child processes, its directory lock, and stopping processes by pid.

Every node, the DNS server and every synthetic client is a child process in its own
session, so a Ctrl-C in the terminal reaches only ``atlas demo``, which then stops its
children in order: SIGTERM, a bounded wait, SIGKILL for whatever is left. On Linux each
child also asks the kernel for SIGTERM should ``atlas demo`` itself die
(``PR_SET_PDEATHSIG``), so even a killed demo leaves no process behind.

``DIR/demo.lock`` is held (``flock``) by the running demo and names its pid; a second
``atlas demo`` in the same directory finds it locked. :func:`terminate_pids` stops
processes that are not our children (``atlas demo stop``), after checking from
``/proc/PID/cmdline`` that each pid is still the process we started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

STOP_TIMEOUT = 15.0  # a node's own graceful shutdown takes up to ~10 s
_PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child SIGTERMed when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _append(path: Path) -> IO[bytes]:
    return open(path, "ab")


@dataclass
class Child:
    """One child process: a node, the DNS server or a synthetic client."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_file: Path
    proc: asyncio.subprocess.Process | None = None
    _drain: asyncio.Task[None] | None = field(default=None, repr=False)

    async def wait_exit(self) -> None:
        """Until it has exited (at once if it never started)."""
        if self.proc is not None:
            await self.proc.wait()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def start(self, *, stdout_pipe: bool = False) -> None:
        """Start it, its output appended to ``log_file`` (stdout piped if asked)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = _append(self.log_file)  # the child gets its own copy of the descriptor
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                env=self.env,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        finally:
            log.close()

    async def read_line(self, timeout: float) -> bytes:
        """The next stdout line (``stdout_pipe``); b"" if it exited first."""
        assert self.proc is not None and self.proc.stdout is not None
        return await asyncio.wait_for(self.proc.stdout.readline(), timeout)

    def drain_stdout(self, on_line: Callable[[bytes], None] | None = None) -> None:
        """Keep copying piped stdout to the log, so the pipe never fills; each line is
        also handed to ``on_line`` (the clients' ``--json`` events)."""
        proc = self.proc
        if proc is None or proc.stdout is None:
            return
        stdout = proc.stdout

        async def drain() -> None:
            with _append(self.log_file) as log:
                while True:
                    try:
                        line = await stdout.readline()
                    except ValueError:  # a line longer than the stream's limit
                        line = await stdout.read(1 << 16)
                    if not line:
                        break
                    log.write(line)
                    log.flush()
                    if on_line is not None:
                        on_line(line)

        self._drain = asyncio.create_task(drain(), name=f"drain {self.name}")

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.running and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> bool:
        """True once it has exited; False if still running after ``timeout``."""
        if self.proc is None:
            return True
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop copying its output (after the last lines of a process that exited)."""
        if self._drain is not None:
            if not self.running:
                await asyncio.wait({self._drain}, timeout=1.0)
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._drain
            self._drain = None


async def stop_children(
    groups: Iterable[Iterable[Child]],
    *,
    timeout: float = STOP_TIMEOUT,
    force: asyncio.Event | None = None,
) -> list[str]:
    """Stop each group in turn (SIGTERM, wait, SIGKILL); return the names killed.

    ``force`` set (a second Ctrl-C) skips the rest of the wait and kills at once.
    """
    killed: list[str] = []
    for group in groups:
        every = list(group)
        children = [c for c in every if c.running]
        for c in children:
            c.signal(signal.SIGTERM)
        waits: asyncio.Future[Any] = asyncio.gather(*(c.wait(timeout) for c in children))
        if force is not None:
            forced: asyncio.Future[Any] = asyncio.create_task(force.wait())
            await asyncio.wait({waits, forced}, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
        else:
            await waits
        for c in children:
            if c.running:
                c.signal(signal.SIGKILL)
                await c.wait(5.0)
                killed.append(c.name)
        if not waits.done():
            waits.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waits
        for c in every:
            await c.close()
    return killed


# ---- processes that are not our children ------------------------------------------------


def cmdline(pid: int) -> str | None:
    """The command line of ``pid`` (arguments joined by spaces), None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"]


def is_ours(pid: int, marker: str) -> bool:
    """``pid`` runs and its command line contains ``marker`` (a path we gave it)."""
    line = cmdline(pid)
    return line is not None and marker in line and alive(pid)


def terminate_pids(pids: dict[int, str], timeout: float = STOP_TIMEOUT) -> list[str]:
    """SIGTERM ``pids`` (pid → name), wait, SIGKILL the rest; return the names killed."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed: list[str] = []
    for pid, name in pids.items():
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(name)
    deadline = time.monotonic() + 5.0
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


# ---- the directory lock --------------------------------------------------------------------


class DemoLock:
    """``DIR/demo.lock``: held by the running demo, naming its pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def holder(self) -> int | None:
        """The pid written in the lock file (meaningful while it is held)."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def held_elsewhere(self) -> bool:
        """Another process holds the lock right now."""
        if self._fd is not None:
            return False
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also releases the probe's lock
        return False


__all__ = [
    "STOP_TIMEOUT",
    "Child",
    "DemoLock",
    "alive",
    "cmdline",
    "is_ours",
    "stop_children",
    "terminate_pids",
]
