"""The kvfp-tiny corpus: the Python standard library of the running interpreter.

Every machine with Python has this text, so kvfp can train and evaluate its reference model
offline. The split into train and held-out files is a fixed rule on the file's path relative to
the stdlib root (not on its content), so it is the same on every machine with the same Python:

* a file is **held out** when the first byte of ``sha256(relative_posix_path)`` is ``< 13``
  (about 5% of files);
* files under ``site-packages`` are never part of the corpus;
* files larger than ``MAX_FILE_BYTES`` are skipped: they are generated tables
  (``pydoc_data/topics.py``, unicode data) rather than code.

Probes and calibration use held-out text only, and never the same files: held-out files whose
hash byte is ``< CALIBRATION_BYTE_BELOW`` are the **calibration** files (``calibration_text``);
the other held-out files are the **probe** files (``probe_text``). Training uses train files only.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 256 * 1024
HELD_OUT_BYTE_BELOW = 13  # 13/256 ≈ 5% of files
CALIBRATION_BYTE_BELOW = 3  # of those, about a quarter calibrate schemes; no probe uses them


@dataclass(frozen=True)
class CorpusFile:
    relpath: str
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(relpath: str) -> bool:
    return hashlib.sha256(relpath.encode()).digest()[0] < HELD_OUT_BYTE_BELOW


def _iter_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or "dist-packages" in rel.parts:
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield CorpusFile(rel.as_posix(), text)


def load_split(split: str, root: Path | None = None) -> list[CorpusFile]:
    """Files of one split, ``"train"`` or ``"heldout"``, sorted by path."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    want_held = split == "heldout"
    return [f for f in _iter_files(root or stdlib_root()) if is_held_out(f.relpath) == want_held]


def corpus_hash(files: list[CorpusFile]) -> str:
    """sha256 over paths and contents: identifies the exact text a model was trained on."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.relpath.encode() + b"\0" + f.text.encode() + b"\0")
    return h.hexdigest()


def is_calibration(relpath: str) -> bool:
    return hashlib.sha256(relpath.encode()).digest()[0] < CALIBRATION_BYTE_BELOW


def _joined(files: list[CorpusFile], max_chars: int | None) -> str:
    text = "\n\n".join(f.text for f in files)
    return text if max_chars is None else text[:max_chars]


def probe_files() -> list[CorpusFile]:
    """Held-out files that are not calibration files: the only text probes may use."""
    return [f for f in load_split("heldout") if not is_calibration(f.relpath)]


def probe_text(max_chars: int | None = None) -> str:
    """Probe files joined by blank lines: the filler text of probes."""
    return _joined(probe_files(), max_chars)


def calibration_text(max_chars: int | None = None) -> str:
    """Held-out calibration files: what calibrated schemes fit on; no probe uses them."""
    return _joined([f for f in load_split("heldout") if is_calibration(f.relpath)], max_chars)
