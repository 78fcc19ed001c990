"""Create a model folder all at once: built in a temporary folder beside it, then renamed.

A rename within one file system is atomic, so a reader finds either the complete folder or none,
whatever happened to the writer. ``os.replace`` refuses to replace a non-empty folder, so when two
writers race, the first one's folder stays and the second's is discarded. A writer killed
mid-build leaves its temporary folder (``.tmp-<pid>-<name>.*``), which no reader ever looks at;
the next build of the same folder removes it once it is old and its writer is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ABANDONED_AFTER_S = 3600  # far longer than any build: an older temporary of a dead pid is litter


def _writer_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def remove_abandoned(dest: Path) -> int:
    """Delete temporaries of ``dest`` whose writer is gone and that are older than an hour."""
    n = 0
    for tmp in Path(dest).parent.glob(f".tmp-*-{Path(dest).name}.*"):
        pid = tmp.name.split("-")[1]
        try:
            stale = time.time() - tmp.stat().st_mtime > ABANDONED_AFTER_S
        except OSError:
            continue
        if pid.isdigit() and stale and _writer_gone(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
    return n


def publish_folder(dest: Path, build: Callable[[Path], None]) -> bool:
    """Run ``build(tmp)`` on an empty temporary folder, then rename it to ``dest``.

    Returns ``True`` when this call created ``dest``, ``False`` when another writer created it
    first (this call's folder is then removed). Anything ``build`` raises propagates, and its
    temporary folder is removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{dest.name}.", dir=dest.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        for f in tmp.iterdir():
            f.chmod(0o644)
        try:
            os.replace(tmp, dest)
        except OSError:
            if dest.is_dir() and any(dest.iterdir()):
                return False
            raise
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
