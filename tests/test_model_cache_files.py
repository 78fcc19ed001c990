"""The two pieces a cached conversion stands on: all-or-nothing folders and remembered file hashes."""

import hashlib
import os

import pytest

from kvfp.models import file_sha256 as fs
from kvfp.models.publish import publish_folder


def _write(files):
    def build(tmp):
        for name, text in files.items():
            (tmp / name).write_text(text)
    return build


def test_publish_creates_the_whole_folder(tmp_path):
    dest = tmp_path / "m"
    assert publish_folder(dest, _write({"a": "1", "b": "2"}))
    assert sorted(p.name for p in dest.iterdir()) == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_failed_build_leaves_nothing(tmp_path):
    def build(tmp):
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt  # as a user's Ctrl-C in the middle of a conversion

    with pytest.raises(KeyboardInterrupt):
        publish_folder(tmp_path / "m", build)
    assert list(tmp_path.iterdir()) == []


def test_the_first_writer_wins(tmp_path):
    dest = tmp_path / "m"
    assert publish_folder(dest, _write({"a": "first"}))
    assert not publish_folder(dest, _write({"a": "second"}))
    assert (dest / "a").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["m"]


def test_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    f, cache = tmp_path / "w.bin", tmp_path / "cache"
    f.write_bytes(b"weights")
    assert fs.file_sha256(f, cache) == hashlib.sha256(b"weights").hexdigest()
    monkeypatch.setattr(fs, "_memo", {})  # as in a new process
    monkeypatch.setattr(fs, "sha256_of", lambda p: pytest.fail("hashed again"))
    assert fs.file_sha256(f, cache) == hashlib.sha256(b"weights").hexdigest()
    monkeypatch.undo()
    f.write_bytes(b"other!!")  # same size, new mtime
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert fs.file_sha256(f, cache) == hashlib.sha256(b"other!!").hexdigest()


def test_an_abandoned_temporary_is_removed_by_the_next_build(tmp_path):
    dead = tmp_path / ".tmp-999999999-m.abc"  # no such pid
    live = tmp_path / f".tmp-{os.getpid()}-m.def"
    for d in (dead, live):
        d.mkdir()
        (d / "half").write_text("x")
        os.utime(d, (1, 1))  # written long ago
    assert publish_folder(tmp_path / "m", _write({"a": "1"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "m"]
