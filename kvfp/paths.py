"""Where kvfp keeps what it computes once: ``$KVFP_CACHE``, default ``~/.cache/kvfp``.

Subfolders: ``models`` (converted GGUF models), ``file-sha256`` (remembered file hashes),
``calibration``, ``references``, ``replays``. One definition, below every layer that uses it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("KVFP_CACHE", Path.home() / ".cache" / "kvfp"))
