"""The one lock primitive of a run dir: an exclusive `flock` on a small file whose text says who holds
it ("pid N on HOST", or what a launcher's queue is holding it for).

Liveness comes from the lock itself, never from the pid in the text: the kernel drops an flock when
its process ends, however it ends (kill -9 and a reboot included), so a lock that can be taken is a
run nobody is training, whatever stale text the file still holds, and a pid reused by another
program after a reboot can never make a dead run look alive.

- `hold(path, note)`: take it (waiting up to `wait_s`, so that a `holder` probe, which holds a shared
  lock for microseconds, never makes a trainer starting at that instant fail); with `share`, re-entrant
  within the process, so a launcher's worker that holds a run dir can call the trainer, which takes it
  again.
- `holder(path)`: the text of whoever holds it now, or None; probes with a shared lock (allowed on a
  read-only file) and never changes the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO, Iterator

from mmbench.errors import MmbenchError

# path → (open file, depth, shared): the locks this process holds; `shared` ones may be taken again in
# this process (re-entrance: the same file opened twice by one process would conflict with itself)
_HELD: dict[str, tuple[IO[str], int, bool]] = {}


class LockHeld(MmbenchError):
    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


def me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _key(path: Path) -> str:
    return str(Path(path).resolve())


@contextlib.contextmanager
def hold(path: Path, note: str | None = None, wait_s: float = 2.0, share: bool = False) -> Iterator[None]:
    """Hold `path`'s lock (created if missing) for the block; LockHeld names the holder when another
    process still holds it after `wait_s` seconds. `share`: code this holder calls may take it again
    (a launcher's worker calling the trainer); otherwise a second take in this process is refused too."""
    path = Path(path)
    key = _key(path)
    if key in _HELD:
        handle, depth, shared = _HELD[key]
        if not shared:
            handle.seek(0)
            raise LockHeld(path, handle.read().strip() or me())
        _HELD[key] = (handle, depth + 1, shared)
        try:
            yield
        finally:
            handle, depth, shared = _HELD[key]
            _HELD[key] = (handle, depth - 1, shared)
        return
    handle = _take(path, wait_s)
    _HELD[key] = (handle, 1, share)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write((note or me()) + "\n")
        handle.flush()
        yield
    finally:
        _HELD.pop(key, None)
        handle.close()  # releases the flock


def _take(path: Path, wait_s: float) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except OSError:
            if time.monotonic() >= deadline:
                handle.seek(0)
                text = handle.read().strip() or "another process"
                handle.close()
                raise LockHeld(path, text) from None
            time.sleep(0.05)


def holder(path: Path) -> str | None:
    """Who holds `path`'s lock now (its text), or None when nobody does."""
    path = Path(path)
    key = _key(path)
    if key in _HELD:
        handle = _HELD[key][0]
        handle.seek(0)
        return handle.read().strip() or me()
    try:
        handle = open(path, encoding="utf-8")
    except OSError:  # no lock file (never trained) or unreadable
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


@contextlib.contextmanager
def read(path: Path, mode: int = 0o644) -> Iterator[None]:
    """Hold `path`'s lock shared while reading what it guards: several readers at once, never beside an
    exclusive holder (`hold`); LockHeld (naming the holder) when one has it."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, mode)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise LockHeld(Path(path), holder(path) or "another process") from None
        yield
    finally:
        os.close(fd)
