"""Folders that appear whole or not at all: built in a hidden temp folder beside the target
(`.NAME.tmp-*`), then renamed into place; an earlier output is first moved into `.NAME.old-*` and
removed after the rename. Used by `prepare` (its output folder) and for the generated synthetic raw
data of `--smoke` runs.

A process killed anywhere in this (SIGTERM, kill -9, Ctrl-C) leaves only those hidden folders. Each is
held with an exclusive flock by the process that made it (the kernel drops the lock when the process
dies, however it dies), so the next run tells a dead process's leftover from a live one's and
`finish_interrupted(target)` restores the old output (killed between the two renames, `target` is
missing and the old one sits in `.NAME.old-*/previous`) and removes the rest: the target is always
either the old folder or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from mmbench.results.store import fsync_dir

PREVIOUS = "previous"


def _claim(folder: Path) -> int | None:
    """An fd holding `folder`'s exclusive flock, or None when a live process holds it (or it is gone)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def held_temp_dir(target: Path, kind: str = "tmp"):
    """A new hidden `.NAME.<kind>-*` folder beside `target`, flock-held while the block runs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    fd = _claim(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def leftovers(target: Path) -> list[Path]:
    """`.NAME.old-*` first (they may hold the only copy of the output), then `.NAME.tmp-*`."""
    if not target.parent.is_dir():
        return []
    names = [p for p in target.parent.iterdir() if p.is_dir() and not p.is_symlink()]
    return ([p for p in sorted(names) if p.name.startswith(f".{target.name}.old-")]
            + [p for p in sorted(names) if p.name.startswith(f".{target.name}.tmp-")])


def finish_interrupted(target: Path, log: Callable[[str], None] | None = None) -> None:
    """Clean what a killed process left beside `target` (see the module doc); a live one's are kept."""
    for folder in leftovers(target):
        fd = _claim(folder)
        if fd is None:
            continue
        try:
            previous = folder / PREVIOUS
            if folder.name.startswith(f".{target.name}.old-") and previous.is_dir() and not target.exists():
                os.replace(previous, target)
                fsync_dir(target.parent)
                if log:
                    log(f"restored {target} from {folder.name} (a run was killed while replacing it)")
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)


def swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`, moving an earlier `out` aside first and deleting it after."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        tmp.rename(out)
        fsync_dir(out.parent)
        return
    with held_temp_dir(out, "old") as old:
        os.replace(out, old / PREVIOUS)
        tmp.rename(out)
        fsync_dir(out.parent)


def build_atomically(target: Path, build: Callable[[Path], None]) -> None:
    """build(folder) fills a temp folder that is then renamed to `target` (which must not exist yet);
    if another process renamed its own complete build in first, that one is kept."""
    finish_interrupted(target)
    with held_temp_dir(target) as tmp:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
        fsync_dir(target.parent)
