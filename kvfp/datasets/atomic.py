"""Whole-file writes that never overwrite: write under a temporary name, then link into place.

``os.link`` fails when the target exists, so publishing is an atomic *create-if-absent*: two
processes racing to write the same file cannot clobber each other, and a process killed at any
point leaves either the complete file or nothing under the real name (plus a temporary file that
:func:`remove_stale_temporaries` clears later).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"
_TMP_NAME = re.compile(r"\.tmp-(\d+)-[0-9a-f]+-")


def temporary_path(path: Path) -> Path:
    """A fresh name beside ``path`` (same folder, so linking it into place is atomic) that
    records the writer's pid, so a later run can tell an abandoned temporary from a live one."""
    return path.parent / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}"


def publish_new(path: Path | str, write: Callable[[Path], None]) -> bool:
    """Create ``path`` with ``write(tmp)`` unless it already exists.

    Returns ``True`` when this call created the file, ``False`` when it was already there (the
    temporary is discarded: the existing file wins, whoever wrote it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    except OSError as e:
        if e.filename is None:  # a failed write() (a full disk) names no file: name the one being written
            e.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def publish_text(path: Path | str, text: str) -> bool:
    """:func:`publish_new` for a text file."""
    return publish_new(path, lambda tmp: tmp.write_text(text))


def replace_text(path: Path | str, text: str) -> None:
    """Replace ``path``'s content atomically (only for files kvfp itself owns, e.g. a manifest
    that grows a scheme)."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporaries under ``folder`` whose writer process is gone; returns how many."""
    n = 0
    for p in Path(folder).rglob(f"{TMP_PREFIX}*"):
        m = _TMP_NAME.match(p.name)
        if m and p.is_file() and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            n += 1
    return n


@contextmanager
def exclusive_lock(path: Path | str) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if needed) for a short read-modify-write; the
    kernel drops it if the holder dies, so a killed process never leaves it locked."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
