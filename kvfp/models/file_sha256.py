"""The sha256 of a large file, computed once per version of the file.

Converted models are keyed by their source file's sha256, and hashing a 100 MB GGUF on every
``--model`` costs a few tenths of a second per call (more on a busy machine). The digest is
remembered under ``<cache>/file-sha256/`` next to the file's size, mtime and inode, and reused
while those three are unchanged: a rewritten or replaced file gets a new mtime or inode, so it is
hashed again. A file edited in place within one mtime tick at the same size would be missed;
nothing kvfp reads changes that way (wheels are unpacked, not edited).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

CHUNK = 1 << 20

_memo: dict[tuple, str] = {}


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def sha256_of(path: Path) -> str:
    """Hash the file's bytes (no caching)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path | str, cache: Path) -> str:
    """sha256 of ``path``, remembered in ``cache`` while the file's size, mtime and inode stay."""
    path = Path(path).resolve()
    stamp = _stamp(path)
    key = (str(cache), *stamp.values())  # per cache: a record is written to each cache it is asked of
    if key in _memo:
        return _memo[key]
    record = cache / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.json"
    try:
        saved = json.loads(record.read_text())
        if {k: saved.get(k) for k in stamp} == stamp:
            _memo[key] = saved["sha256"]
            return saved["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no record yet, or one from an older file: hash again
    digest = sha256_of(path)
    if _stamp(path) != stamp:  # changed while being read: do not remember a digest of mixed bytes
        return digest
    _memo[key] = digest
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=cache)
        with os.fdopen(fd, "w") as f:
            json.dump({**stamp, "sha256": digest}, f)
        os.replace(tmp, record)  # readers see the old record or the new one, never half of one
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest
