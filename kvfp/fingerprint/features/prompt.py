"""``prompt`` tier: logprobs of the prompt's own tokens against the reference prefill.

What vLLM's ``prompt_logprobs`` (or ``echo``) returns is the prefill scoring the prompt. Schemes
that act during prefill (sliding windows, prefill-time eviction, merging) change it, decode-only
quantization leaves it exact (HF's quantized cache attends to unquantized K/V during prefill): the
prompt tier sees the scheme's ``phase``. A planted span that needs earlier text (the second copy of
a repeated span, a question about a needle) is where a window or an eviction scheme shows.

Per prompt position ``j ≥ 1``: ``Δ_j = obs_j − ref_j``. Features: mean |Δ|, RMS and max in noise
units, the signed mean (compression makes the prompt less predictable: Δ < 0), and |Δ| profiles
over prompt quarters and over distance past the nearest planted span start.
"""

from __future__ import annotations

import numpy as np

from kvfp.fingerprint.features import profiles as P
from kvfp.fingerprint.features.common import EPS, rel, safe_mean


def as_array(prompt_logprobs) -> np.ndarray:
    """``(n_prompt,)`` float64 with NaN where nothing was returned (always position 0)."""
    return np.array([np.nan if x is None else float(x) for x in prompt_logprobs], dtype=np.float64)


def delta(obs_plp, ref_plp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions scored by both runs and ``obs − ref`` there."""
    o = as_array(obs_plp)
    r = np.asarray(ref_plp, dtype=np.float64)
    if len(o) != len(r):
        raise ValueError(f"prompt logprobs cover {len(o)} positions, the reference prompt has {len(r)}")
    ok = np.isfinite(o) & np.isfinite(r)
    pos = np.nonzero(ok)[0]
    return pos, o[ok] - r[ok]


def names() -> list[str]:
    out = ["prompt.mabs", "prompt.rms", "prompt.max", "prompt.signed"]
    out += [f"prompt.abs.{b}" for b in P.QUARTER_LABELS]
    out += [f"prompt.abs.{b}" for b in P.DIST_LABELS] + [f"prompt.frac.{b}" for b in P.DIST_LABELS]
    return out


def compute(obs, ref, noise_obs, probe=None) -> dict[str, float]:
    """Features of an observation restricted to the ``prompt`` tier."""
    if ref.ref.prompt_logprobs is None:
        raise ValueError("the reference holds no prompt logprobs; build it with prompt_logprobs=True")
    pos, d = delta(obs.prompt_logprobs, ref.ref.prompt_logprobs)
    if noise_obs is not None:
        _, dn = delta(noise_obs.prompt_logprobs, ref.ref.prompt_logprobs)
    else:
        dn = np.zeros(0)
    a, an = np.abs(d), np.abs(dn)
    floor = safe_mean(an)
    out = {
        "prompt.mabs": rel(safe_mean(a), floor, EPS["logit"]),
        "prompt.rms": rel(np.sqrt(safe_mean(d ** 2)), np.sqrt(safe_mean(dn ** 2)), EPS["logit"]),
        "prompt.max": rel(float(a.max()) if a.size else 0.0, float(an.max()) if an.size else 0.0, EPS["logit"]),
        "prompt.signed": float(np.arcsinh(safe_mean(d) / (floor + EPS["logit"]))),
    }
    n = len(obs.prompt_ids)
    quarter = P.quarter_of(n)[pos]
    means, _ = P.bucket_means(a, quarter, P.N_QUARTERS)
    for b, m in zip(P.QUARTER_LABELS, means):
        out[f"prompt.abs.{b}"] = rel(m, floor, EPS["logit"])
    means, frac = P.bucket_means(a, P.distance_bucket(pos, P.span_starts(probe)), len(P.DIST_LABELS))
    for b, m in zip(P.DIST_LABELS, means):
        out[f"prompt.abs.{b}"] = rel(m, floor, EPS["logit"])
    for b, f in zip(P.DIST_LABELS, frac):
        out[f"prompt.frac.{b}"] = float(f)
    return out
