"""Claims on units of work, so that several processes can share one output folder.

A claim is a file ``.claims/<unit>.lock`` holding the owner's pid, host and process start time,
created whole and exclusively (written under a temporary name, then hard-linked into place: like
``O_CREAT | O_EXCL``, only one process can create it, and nobody ever sees it half written). A
claim whose owner is gone — killed with SIGKILL, say, so it never cleaned up — is stale and may
be taken over. Takeovers are serialised by an ``flock`` on ``.claims/.takeover``: two processes
that both find the same stale claim cannot both win. The start time tells a dead owner from an
unrelated process that later got the same pid. Claims from another host are never judged stale:
this host cannot see them.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from kvfp.datasets.atomic import exclusive_lock, pid_alive, publish_text

CLAIMS = ".claims"


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), ``None`` elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def _identity() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": process_start(pid)}


def owner_alive(info: dict) -> bool:
    """Whether the process that wrote claim ``info`` still runs (``True`` when unknowable)."""
    if info.get("host") != socket.gethostname():
        return True
    pid = info.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    start = info.get("start")
    return start is None or process_start(pid) in (None, start)


class Claim:
    """A held claim; :meth:`release` removes it."""

    def __init__(self, path: Path):
        self.path = path

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


class Claims:
    """The claims folder of one dataset."""

    def __init__(self, folder: Path):
        self.dir = Path(folder) / CLAIMS
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, unit: str) -> Path:
        return self.dir / f"{unit}.lock"

    def _create(self, path: Path) -> Claim | None:
        return Claim(path) if publish_text(path, json.dumps(_identity())) else None

    def _read(self, path: Path) -> dict | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
        except (ValueError, RecursionError):  # claims are written whole, so this one is damaged: nobody owns it
            info = {"pid": None, "host": socket.gethostname()}
        return info if isinstance(info, dict) else {"pid": None, "host": socket.gethostname()}

    def holder(self, unit: str) -> dict | None:
        """Who holds ``unit`` now (``None``: nobody, or a stale claim)."""
        info = self._read(self.path(unit))
        return info if info is not None and owner_alive(info) else None

    def try_claim(self, unit: str) -> Claim | None:
        """Claim ``unit``, taking over a stale claim; ``None`` when a live process holds it."""
        path = self.path(unit)
        got = self._create(path)
        if got is not None:
            return got
        seen = self._read(path)
        if seen is None:  # released just now
            return self._create(path)
        if owner_alive(seen):
            return None
        with exclusive_lock(self.dir / ".takeover"):
            if self._read(path) != seen:  # someone else took it over (or released it) meanwhile
                return self._create(path)
            path.unlink(missing_ok=True)
            return self._create(path)

    def sweep(self) -> int:
        """Remove claims whose owner is gone (a process killed after publishing its unit but
        before releasing it leaves one behind); returns how many."""
        n = 0
        for path in self.dir.glob("*.lock"):
            seen = self._read(path)
            if seen is None or owner_alive(seen):
                continue
            with exclusive_lock(self.dir / ".takeover"):
                if self._read(path) == seen:  # not taken over meanwhile
                    path.unlink(missing_ok=True)
                    n += 1
        return n
