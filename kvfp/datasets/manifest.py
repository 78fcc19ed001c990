"""The dataset manifest: what a dataset's traces were produced by.

``manifest.json`` names the model (id, path, weights hash), its tokenizer (hash), the probe suite
(hash; the suite itself is copied beside it as ``probes.jsonl``), the schemes with their genes, the
nuisance settings every trace was produced under, the shard layout and the library versions.

Two runs may write into one dataset only when their :func:`run_key` agree: same weights,
tokenizer, probes, settings, shard layout and torch/transformers versions. Their scheme lists may
differ: the manifest lists the union, so a dataset can grow a scheme later.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from kvfp.errors import KvfpError
from kvfp.json_input import parse_json

KIND = "kvfp-dataset"
FORMAT = 1
MANIFEST = "manifest.json"
PROBES = "probes.jsonl"
SHARDS = "shards"
REQUIRED = ("kind", "format", "model", "probes", "schemes", "settings", "shards", "versions")
SETTINGS = ("new_tokens", "topk", "logits", "prompt_logprobs", "dtype", "attn", "batch_size", "padding", "device",
            "threads")
OPTIONAL_SETTINGS = ("engine", "flash_attn")  # recorded only when an engine profile was used


def versions() -> dict:
    import torch
    import transformers

    import kvfp

    return {"kvfp": kvfp.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def build_manifest(*, model_id: str, model_path: str, weights_hash: str, tokenizer_hash: str, suite,
                   schemes: list, settings: dict, shard_size: int) -> dict:
    """A new manifest. ``suite`` is a :class:`kvfp.probes.ProbeSuite`, ``schemes`` are
    :class:`kvfp.compressors.Scheme` objects, ``settings`` holds every key of :data:`SETTINGS`."""
    missing = [k for k in SETTINGS if k not in settings]
    if missing:
        raise ValueError(f"settings lack {missing}")
    n = len(suite.probes)
    return {
        "kind": KIND,
        "format": FORMAT,
        "model": {"id": model_id, "path": model_path, "weights_hash": weights_hash,
                  "tokenizer_hash": tokenizer_hash},
        "probes": {"file": PROBES, "suite_hash": suite.hash, "n_probes": n,
                   "suite": suite.header.get("suite"), "ids": [p.id for p in suite.probes]},
        "schemes": [{"name": s.name, "gene": s.gene.to_dict()} for s in schemes],
        "settings": {k: settings[k] for k in (*SETTINGS, *OPTIONAL_SETTINGS) if k in settings},
        "shards": {"size": shard_size, "count": -(-n // shard_size),
                   "layout": f"{SHARDS}/<scheme>/shard-<index>.parquet"},
        "versions": versions(),
    }


def run_key(manifest: dict) -> dict:
    """The fields two runs must share to write into one dataset."""
    return {
        "format": manifest["format"],
        "weights_hash": manifest["model"]["weights_hash"],
        "tokenizer_hash": manifest["model"]["tokenizer_hash"],
        "suite_hash": manifest["probes"]["suite_hash"],
        "settings": manifest["settings"],
        "shard_size": manifest["shards"]["size"],
        "torch": manifest["versions"]["torch"],
        "transformers": manifest["versions"]["transformers"],
    }


def check_compatible(existing: dict, requested: dict, path: Path) -> None:
    """Raise :class:`KvfpError` naming every field where ``requested`` differs from ``existing``."""
    a, b = run_key(existing), run_key(requested)
    diffs = []
    for key in a:
        if key == "settings":
            diffs += [f"settings.{k}: {a[key].get(k)!r} there, {b[key].get(k)!r} now"
                      + (f" (pass --threads {a[key].get(k)} to match)" if k == "threads" else "")
                      for k in SETTINGS if a[key].get(k) != b[key].get(k)]
        elif a[key] != b[key]:
            diffs.append(f"{key}: {a[key]!r} there, {b[key]!r} now")
    if diffs:
        raise KvfpError(
            f"{path} holds a dataset from a different run, so it cannot be resumed or extended "
            f"(kvfp never overwrites output):\n  " + "\n  ".join(diffs) + "\nChoose another --out.", exit_code=2)


def with_schemes(manifest: dict, schemes: list[dict]) -> dict:
    """``manifest`` listing its schemes plus any of ``schemes`` it lacks (order kept)."""
    have = {s["name"] for s in manifest["schemes"]}
    return {**manifest, "schemes": manifest["schemes"] + [s for s in schemes if s["name"] not in have]}


def dumps(manifest: dict) -> str:
    return json.dumps(manifest, indent=2) + "\n"


def read_manifest(folder: Path | str) -> dict:
    """Read and check ``folder/manifest.json``; any defect is a :class:`KvfpError` naming the file."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise KvfpError(f"{folder}: no such dataset folder", exit_code=2)
    if not path.is_file():
        raise KvfpError(f"{folder} is not a kvfp dataset: {MANIFEST} is missing (make one with `kvfp collect`)")
    m = parse_json(path.read_bytes(), str(path))
    if not isinstance(m, dict) or m.get("kind") != KIND:
        kind = m.get("kind") if isinstance(m, dict) else type(m).__name__
        raise KvfpError(f"{path}: kind is {kind!r}, not {KIND!r}: this folder is not a kvfp dataset")
    if not isinstance(m.get("format"), int) or m["format"] > FORMAT:
        raise KvfpError(f"{path}: dataset format {m.get('format')!r} is not one this kvfp reads (≤ {FORMAT}); "
                        f"upgrade kvfp")
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise KvfpError(f"{path}: missing field(s) {', '.join(missing)}")
    _need(path, m["model"], "model", ("id", "weights_hash", "tokenizer_hash"))
    _need(path, m["probes"], "probes", ("suite_hash", "n_probes"))
    _need(path, m["shards"], "shards", ("size", "count"))
    _need(path, m["settings"], "settings", SETTINGS)
    if not isinstance(m["schemes"], list) or not all(isinstance(s, dict) and "name" in s for s in m["schemes"]):
        raise KvfpError(f"{path}: field schemes must be a list of {{name, gene}} objects")
    size, count, n = m["shards"]["size"], m["shards"]["count"], m["probes"]["n_probes"]
    if not (isinstance(size, int) and size >= 1 and count == -(-n // size)):
        raise KvfpError(f"{path}: shards.size {size!r} and shards.count {count!r} do not fit {n} probes")
    return m


def _need(path: Path, section, name: str, keys) -> None:
    if not isinstance(section, dict):
        raise KvfpError(f"{path}: field {name} must be an object")
    missing = [k for k in keys if k not in section]
    if missing:
        raise KvfpError(f"{path}: field {name} lacks {', '.join(missing)}")


def tokenizer_hash(tokenizer) -> str:
    """The tokenizer's identity, as probe suites record it."""
    from kvfp.probes import tokenizer_hash as probe_side

    return probe_side(tokenizer)
