"""The query log: JSON lines appended one whole line per ``write``, so that resuming is reading.

A line is written with a single ``os.write`` on a file opened for appending, then flushed to disk;
a crash can at worst leave the last line without its newline, which is not an answered probe: on
resume that torn tail is cut off (it is never data that was complete) and the probe is asked again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kvfp.errors import KvfpError


class QueryLog:
    def __init__(self, path: Path, settings: dict, suite_hash: str):
        self.path, self.settings, self.suite_hash = Path(path), settings, suite_hash
        self.answered: set[str] = set()
        self.torn = 0
        self._fd: int | None = None

    def open(self) -> None:
        if self.path.is_dir():
            raise KvfpError(f"--out {self.path} is a folder; name a log file", exit_code=2)
        if self.path.exists():
            self._resume()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise KvfpError(f"cannot write the log {self.path}: {e.strerror or e}", exit_code=2) from None

    def _resume(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line without its newline: the write was cut by a crash
            self.torn = len(data) - end
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for n, raw in enumerate(data[:end].splitlines(), 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                block = rec["kvfp"]
                probe_id, settings, suite = block["probe_id"], block.get("query"), block.get("suite_hash")
            except (ValueError, KeyError, TypeError):
                raise KvfpError(f"{self.path}:{n}: not a kvfp query log line; write to a new --out or resume with "
                                f"the log `kvfp query` wrote", exit_code=2) from None
            if suite != self.suite_hash:
                raise KvfpError(f"{self.path}:{n}: answers another probe suite; resume with the same --probes or "
                                f"write to a new --out", exit_code=2)
            if settings != self.settings:
                diff = sorted(k for k in set(self.settings) | set(settings or {})
                              if (settings or {}).get(k) != self.settings.get(k))
                raise KvfpError(f"{self.path}:{n}: written with other settings ({', '.join(diff)}); resume with the "
                                f"same options or write to a new --out", exit_code=2)
            self.answered.add(probe_id)

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):  # a short write to a full disk: cut it back so no torn line remains
            os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - written)
            raise OSError(28, "short write (disk full?)")
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
