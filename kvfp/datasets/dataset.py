"""Reading a dataset folder: ``open_dataset(dir) -> Dataset``.

A dataset folder holds ``manifest.json``, ``probes.jsonl`` (the probe suite, so the folder is
self-contained) and ``shards/<scheme>/shard-NNNNN.parquet``. Shard ``i`` holds probes
``[i * size, (i + 1) * size)`` of the suite, for one scheme. Names starting with a dot
(temporaries, claims) are not part of the data.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from kvfp.datasets.manifest import PROBES, SHARDS, read_manifest
from kvfp.datasets.shards import check_shard_schema, read_shard, shard_name, table_to_traces
from kvfp.errors import KvfpError
from kvfp.probes.probe import Probe, ProbeSuite, read_suite
from kvfp.runner.trace import Trace

_SHARD_FILE = re.compile(r"shard-(\d{5})\.parquet")


def shard_probes(probes: list[Probe], size: int, index: int) -> list[Probe]:
    """The probes of shard ``index`` when shards hold ``size`` consecutive probes."""
    return probes[index * size:(index + 1) * size]


class Dataset:
    """An opened dataset. Construct with :func:`open_dataset`.

    Attributes
    ----------
    path : the folder
    manifest : the parsed ``manifest.json``
    probes : the :class:`~kvfp.probes.ProbeSuite` the traces answer
    """

    def __init__(self, path: Path, manifest: dict, probes: ProbeSuite, present: set[tuple[str, int]]):
        self.path, self.manifest, self.probes = path, manifest, probes
        self._present = present

    @property
    def schemes(self) -> list[str]:
        return [s["name"] for s in self.manifest["schemes"]]

    @property
    def n_shards(self) -> int:
        return self.manifest["shards"]["count"]

    def shard_path(self, scheme: str, index: int) -> Path:
        return self.path / SHARDS / scheme / shard_name(index)

    def shard_probes(self, index: int) -> list[Probe]:
        return shard_probes(self.probes.probes, self.manifest["shards"]["size"], index)

    def missing(self) -> list[tuple[str, int]]:
        """Units (scheme, shard index) the manifest lists but no shard file holds yet."""
        return [(s, i) for s in self.schemes for i in range(self.n_shards) if (s, i) not in self._present]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def read_unit(self, scheme: str, index: int) -> list[Trace]:
        """The traces of one shard, checked against the probes it must hold."""
        path = self.shard_path(scheme, index)
        table = read_shard(path)
        want = [p.id for p in self.shard_probes(index)]
        got = table.column("probe_id").to_pylist() if "probe_id" in table.column_names else None
        if got != want:
            raise KvfpError(f"{path}: holds probes {got}, but shard {index} of the suite is {want}")
        schemes = set(table.column("scheme").to_pylist())
        if schemes != {scheme}:
            raise KvfpError(f"{path}: rows name scheme(s) {sorted(schemes)}, but the file sits under {scheme!r}")
        return table_to_traces(table, str(path))

    def traces(self, scheme: str | None = None) -> Iterator[Trace]:
        """Every stored trace (of ``scheme`` only, if given): schemes in manifest order, then
        probes in suite order. Units not written yet are skipped (see :meth:`missing`)."""
        if scheme is not None and scheme not in self.schemes:
            raise KvfpError(f"{self.path}: no scheme {scheme!r} in this dataset (it has {', '.join(self.schemes)})",
                            exit_code=2)
        for s in [scheme] if scheme else self.schemes:
            for i in range(self.n_shards):
                if (s, i) in self._present:
                    yield from self.read_unit(s, i)

    def to_pandas(self, scheme: str | None = None):
        """All shards (of ``scheme``, if given) as one pandas DataFrame, one row per trace, the
        columns of :mod:`kvfp.datasets.shards`."""
        import pandas as pd
        import pyarrow as pa

        from kvfp.datasets.shards import SCHEMA

        tables = [read_shard(self.shard_path(s, i)) for s in ([scheme] if scheme else self.schemes)
                  for i in range(self.n_shards) if (s, i) in self._present]
        if not tables:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in SCHEMA.names})
        return pa.concat_tables(tables).to_pandas()

    def __repr__(self) -> str:
        done = len(self._present)
        return (f"Dataset({str(self.path)!r}, model={self.manifest['model']['id']!r}, "
                f"schemes={len(self.schemes)}, probes={len(self.probes)}, units={done}/{done + len(self.missing())})")


def open_dataset(path: Path | str) -> Dataset:
    """Open a dataset folder, checking that manifest, probe suite and shard files agree.

    Raises :class:`KvfpError` naming the offending file: a missing or malformed manifest, a
    probe suite whose hash is not the manifest's, a shard folder for a scheme the manifest does
    not list, a shard index past the suite, or a file that is not a readable kvfp shard.
    """
    path = Path(path)
    manifest = read_manifest(path)
    suite_path = path / PROBES
    if not suite_path.is_file():
        raise KvfpError(f"{suite_path}: missing; a dataset carries its probe suite")
    suite = read_suite(suite_path)
    want = manifest["probes"]["suite_hash"]
    if suite.hash != want:
        raise KvfpError(f"{suite_path}: probe suite hash {suite.hash[:16]}… does not match the manifest's "
                        f"{str(want)[:16]}… (the suite file was replaced or edited)")
    if len(suite) != manifest["probes"]["n_probes"]:
        raise KvfpError(f"{suite_path}: {len(suite)} probes, the manifest says {manifest['probes']['n_probes']}")
    schemes = {s["name"] for s in manifest["schemes"]}
    count = manifest["shards"]["count"]
    present: set[tuple[str, int]] = set()
    root = path / SHARDS
    for sub in sorted(root.iterdir()) if root.is_dir() else []:
        if sub.name.startswith("."):
            continue
        if not sub.is_dir() or sub.name not in schemes:
            raise KvfpError(f"{sub}: shards of scheme {sub.name!r}, which {path / 'manifest.json'} does not list")
        for f in sorted(sub.iterdir()):
            if f.name.startswith("."):
                continue
            m = _SHARD_FILE.fullmatch(f.name)
            if not m or int(m.group(1)) >= count:
                raise KvfpError(f"{f}: not a shard of this dataset (expected shard-00000.parquet … "
                                f"{shard_name(count - 1)})")
            check_shard_schema(f)
            present.add((sub.name, int(m.group(1))))
    return Dataset(path, manifest, suite, present)
