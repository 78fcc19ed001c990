"""The reference cache: uncompressed (``none``) traces, reused across runs and datasets.

Every comparison needs the ``none`` traces of the same model, probes and settings; they are
costly to recompute and identical every time, so they are kept under
``$KVFP_CACHE/references/<key>/shard-NNNNN.parquet``, where the key hashes everything they depend
on (:func:`kvfp.datasets.manifest.run_key`: weights, tokenizer, probe suite, nuisance settings,
shard layout, torch/transformers versions). Files are published atomically, so concurrent runs
may fill the same cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kvfp.datasets.atomic import publish_text
from kvfp.datasets.manifest import run_key
from kvfp.paths import cache_root


def reference_dir(manifest: dict) -> Path:
    key = run_key(manifest)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_root() / "references" / digest
    if not (folder / "key.json").is_file():
        try:  # for a person browsing the cache: what these traces are
            publish_text(folder / "key.json", json.dumps({"model": manifest["model"]["id"], **key}, indent=2))
        except OSError:
            pass
    return folder
