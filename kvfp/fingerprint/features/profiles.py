"""Profiles: a per-position quantity summarised over fixed buckets, so every vector has one length.

Two bucketings, both fixed so that feature vectors of different probes line up:

* **context position** — quarters of the scored stretch (the generated steps for step features,
  the prompt for prompt features). Decode-time eviction and residual windows flushing into a
  quantized history change the departure as decoding proceeds; prefill-phase schemes don't.
* **distance to planted structure** — how far the scored position lies past the start of the
  nearest planted span of the probe (needle, copy, outlier…; :attr:`kvfp.probes.probe.Probe.spans`)
  that starts at or before it. Eviction hurts where the needed tokens are far back (a window
  shorter than the distance has dropped them); quantization hurts about evenly.

An empty bucket holds a neutral value (0: no departure beyond the noise) and its count fraction
(also a feature) is 0, so a classifier can tell "no data" from "no departure".
"""

from __future__ import annotations

import numpy as np

N_QUARTERS = 4
# [0,16) [16,64) [64,256) [256,1024) [1024,∞) tokens past a span start, then "no span before"
DIST_EDGES = (16, 64, 256, 1024)
DIST_LABELS = ("d0-16", "d16-64", "d64-256", "d256-1k", "d1k+", "nospan")
QUARTER_LABELS = tuple(f"q{i + 1}" for i in range(N_QUARTERS))


def quarter_of(n: int) -> np.ndarray:
    """Bucket ``0..3`` of each of ``n`` consecutive positions: which quarter of the stretch."""
    return np.minimum((np.arange(n) * N_QUARTERS) // max(n, 1), N_QUARTERS - 1)


def span_starts(probe) -> np.ndarray:
    """Sorted start positions of a probe's planted spans (empty without a probe or spans)."""
    if probe is None or not getattr(probe, "spans", None):
        return np.zeros(0, dtype=np.int64)
    return np.array(sorted({int(s[0]) for s in probe.spans.values()}), dtype=np.int64)


def distance_bucket(positions: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Bucket (index into :data:`DIST_LABELS`) of each position's distance past the nearest span start."""
    positions = np.asarray(positions, dtype=np.int64)
    out = np.full(len(positions), len(DIST_LABELS) - 1, dtype=np.int64)
    if len(starts) == 0:
        return out
    j = np.searchsorted(starts, positions, side="right") - 1  # last start ≤ position
    has = j >= 0
    d = positions[has] - starts[j[has]]
    out[has] = np.searchsorted(np.array(DIST_EDGES), d, side="right")
    return out


def bucket_means(values: np.ndarray, buckets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-bucket mean of ``values`` (0 where empty) and the fraction of positions in each bucket."""
    values = np.asarray(values, dtype=np.float64)
    counts = np.bincount(buckets, minlength=n)[:n].astype(np.float64)
    sums = np.bincount(buckets, weights=values, minlength=n)[:n]
    means = np.divide(sums, counts, out=np.zeros(n), where=counts > 0)
    return means, counts / max(len(values), 1)


def js_profiles(prefix: str, js: np.ndarray, n_prompt: int, probe, floor: float, to_feature) -> dict[str, float]:
    """The per-step JS ``(steps,)`` of generated tokens as ``{prefix}.js.<bucket>`` over quarters and
    span distances (each bucket mean passed through ``to_feature(mean, floor)``), plus the share of
    steps in each distance bucket as ``{prefix}.frac.<bucket>``. Shared by the logits and top-k tiers."""
    out = {}
    means, _ = bucket_means(js, quarter_of(len(js)), N_QUARTERS)
    for b, m in zip(QUARTER_LABELS, means):
        out[f"{prefix}.js.{b}"] = to_feature(m, floor)
    pos = n_prompt + np.arange(len(js))
    means, frac = bucket_means(js, distance_bucket(pos, span_starts(probe)), len(DIST_LABELS))
    for b, m in zip(DIST_LABELS, means):
        out[f"{prefix}.js.{b}"] = to_feature(m, floor)
    for b, f in zip(DIST_LABELS, frac):
        out[f"{prefix}.frac.{b}"] = float(f)
    return out
