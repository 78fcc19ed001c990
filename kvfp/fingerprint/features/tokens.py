"""``tokens`` tier (and a part of every tier): the generated ids alone, scored by the reference.

The reference replays the observed tokens, so at each step it says which token *it* would have
chosen given the same prefix. Greedy decoding under a compressed cache departs from the reference
where the reference's margin is small; how often, how large a margin it overturned, and how early
the first departure comes, grow with how much the scheme perturbs attention.

Per step ``t`` with observed token ``y_t`` and reference logprobs ``ℓ_t``: a greedy flip
``y_t ≠ argmax ℓ_t``, the margin ``max ℓ_t − ℓ_t[y_t]`` (0 when they agree), and ``ℓ_t[y_t]``.
"""

from __future__ import annotations

import numpy as np

from kvfp.fingerprint.features import profiles as P
from kvfp.fingerprint.features.common import logsoftmax, safe_mean


def margins(output_ids, logits: np.ndarray) -> np.ndarray:
    """``(steps,)`` how far each observed token is below the run's own choice (nats, ≥ 0)."""
    lr = logsoftmax(logits)
    y = np.asarray(output_ids, dtype=np.int64)
    return lr.max(-1) - lr[np.arange(len(y)), y]


def names() -> list[str]:
    out = ["tokens.flip", "tokens.margin", "tokens.maxmargin", "tokens.first", "tokens.nll"]
    out += [f"tokens.flip.{b}" for b in P.QUARTER_LABELS]
    return out


def compute(obs, ref, noise_obs=None, probe=None) -> dict[str, float]:
    """Features from ``obs.output_ids`` and the reference replay only (valid at every tier)."""
    lr = ref.ref.logprobs()
    m = margins(obs.output_ids, lr)
    flip = (m > 0).astype(np.float64)
    first = int(np.argmax(flip)) if flip.any() else len(flip)
    out = {
        "tokens.flip": safe_mean(flip),
        "tokens.margin": float(np.log1p(safe_mean(m))),
        "tokens.maxmargin": float(np.log1p(m.max())),
        "tokens.first": first / len(flip),
        "tokens.nll": float(np.log1p(-safe_mean(lr[np.arange(len(m)), obs.output_ids]))),
    }
    means, _ = P.bucket_means(flip, P.quarter_of(len(flip)), P.N_QUARTERS)
    for b, v in zip(P.QUARTER_LABELS, means):
        out[f"tokens.flip.{b}"] = float(v)
    return out
