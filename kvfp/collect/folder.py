"""Creating or rejoining a dataset folder, safely when several processes do it at once.

A new folder gets its manifest and then its probe suite, each published create-if-absent (see
:mod:`kvfp.datasets.atomic`): whichever process publishes first defines the dataset, the others
check that they were asked for the same run. A folder that exists and is not a kvfp dataset, or
holds a dataset of a different run, is refused; nothing in it is touched.
"""

from __future__ import annotations

from pathlib import Path

from kvfp.collect.claims import CLAIMS
from kvfp.datasets.atomic import (
    TMP_PREFIX,
    exclusive_lock,
    publish_new,
    publish_text,
    remove_stale_temporaries,
    replace_text,
)
from kvfp.datasets.manifest import MANIFEST, PROBES, check_compatible, dumps, read_manifest, with_schemes
from kvfp.errors import KvfpError
from kvfp.probes import ProbeSuite, read_suite, write_suite


def check_target(out: Path) -> None:
    """Refuse ``out`` unless it is absent, empty, or a kvfp dataset (checked further later)."""
    if out.exists() and not out.is_dir():
        raise KvfpError(f"{out} already exists and is a file; kvfp never overwrites output. Choose another --out.",
                        exit_code=2)
    if out.is_dir() and not (out / MANIFEST).is_file():
        others = [p.name for p in out.iterdir() if not p.name.startswith((TMP_PREFIX, CLAIMS))]
        if others:
            raise KvfpError(f"{out} already exists and is not a kvfp dataset (it holds {', '.join(sorted(others)[:3])}"
                            f"{'…' if len(others) > 3 else ''}); kvfp never overwrites output. Choose another --out.",
                            exit_code=2)


def prepare_folder(out: Path, requested: dict, suite: ProbeSuite) -> dict:
    """Create ``out`` as a dataset for ``requested`` (a manifest) or rejoin the same run there.

    Returns the manifest in effect: the existing one when the folder already held this run, with
    any requested scheme it lacked appended (a dataset may grow schemes; nothing else may differ).
    """
    out = Path(out)
    check_target(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    published: list[Path] = []
    try:
        return _join(out, requested, suite, published)
    except OSError:
        if created:  # a folder this call made but could not set up (a full disk) is no dataset: leave none
            for p in published:
                p.unlink(missing_ok=True)
            try:
                out.rmdir()  # only if empty: a process that joined meanwhile keeps its files and the folder
            except OSError:
                pass
        raise


def _join(out: Path, requested: dict, suite: ProbeSuite, published: list[Path]) -> dict:
    """Publish or check the manifest and the suite; ``published`` gets the files this call created."""
    if publish_text(out / MANIFEST, dumps(requested)):
        published.append(out / MANIFEST)
    else:
        existing = read_manifest(out)
        check_compatible(existing, requested, out)
        have = {s["name"] for s in existing["schemes"]}
        if any(s["name"] not in have for s in requested["schemes"]):
            with exclusive_lock(out / ".manifest.lock"):  # read-modify-write: one process at a time
                replace_text(out / MANIFEST, dumps(with_schemes(read_manifest(out), requested["schemes"])))
    suite_path = out / PROBES
    if publish_new(suite_path, lambda tmp: _write_suite(tmp, suite)):
        published.append(suite_path)
    if read_suite(suite_path).hash != suite.hash:
        raise KvfpError(f"{suite_path}: holds another probe suite than this run's (hash differs)", exit_code=2)
    remove_stale_temporaries(out)
    return read_manifest(out)


def _write_suite(path: Path, suite: ProbeSuite) -> None:
    write_suite(path, suite)
