"""``topk-k`` tiers: the returned top-k logprobs against the reference, on their shared support.

Top-k logprobs are the logits minus one constant per step (the log-normaliser), so within a step
their differences are exact logit differences. Every quantity here is computed from values centred
on the returned ids (or renormalised over them), which makes the features exactly invariant to
adding any constant per step: nothing depends on the endpoint's normaliser, which a top-k API
cannot report faithfully anyway.

Per step, on the returned ids ``S``: the centred difference (its RMS and largest entry), KL both
ways and JS of the two distributions renormalised on ``S``, Spearman and Kendall agreement of the
returned order with the reference's order of the same ids, a top-1 flip, the reference mass the
returned ids miss compared with the reference's own top-k, and the overlap with the reference's top-k.
"""

from __future__ import annotations

import numpy as np

from kvfp.fingerprint.features import profiles as P
from kvfp.fingerprint.features.common import EPS, centred, js, kendall, kl, logsoftmax, rel, safe_mean, spearman
from kvfp.fingerprint.observation import topk_of

_REL = (("drms", "logit"), ("dmax", "logit"), ("kl_or", "kl"), ("kl_ro", "kl"), ("js", "js"))
_RAW = ("spear", "kendall", "flip", "missmass", "miss")


def support(obs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The returned ids ``(steps, k)`` and their logprobs ``(steps, k)`` (float64), most likely first."""
    ids = np.array([r[:k] for r in obs.topk_ids], dtype=np.int64)
    lps = np.array([r[:k] for r in obs.topk_logprobs], dtype=np.float64)
    if ids.shape != (obs.steps, k) or lps.shape != ids.shape:
        raise ValueError(f"observation does not hold {k} top-k entries at each of its {obs.steps} steps")
    return ids, lps


def departure(lps: np.ndarray, other_lr: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Centred difference ``(steps, k)`` between returned logprobs and another run's logprobs
    ``(steps, vocab)`` on the returned ids: zero for the same run whatever each step's constant."""
    return centred(lps) - centred(np.take_along_axis(other_lr, ids, -1))


def restricted_js(lps: np.ndarray, other_lr: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """JS per step ``(steps,)`` between two runs renormalised on the returned ids."""
    return js(logsoftmax(lps), logsoftmax(np.take_along_axis(other_lr, ids, -1)))


def per_step(ids: np.ndarray, lps: np.ndarray, ref_lr: np.ndarray) -> dict[str, np.ndarray]:
    k = ids.shape[1]
    r = np.take_along_axis(ref_lr, ids, -1)  # (S, k) reference logprobs on the returned ids
    d = centred(lps) - centred(r)
    lo, lrs = logsoftmax(lps), logsoftmax(r)
    ref_top = np.argpartition(-ref_lr, k - 1, axis=-1)[:, :k]
    ref_top_mass = np.exp(np.take_along_axis(ref_lr, ref_top, -1)).sum(-1)
    mass = np.exp(r).sum(-1)
    # the returned order is the observation's ranking; compare it with the reference values there
    order = -np.arange(k, dtype=np.float64)
    return {
        "drms": np.sqrt((d ** 2).mean(-1)), "dmax": np.abs(d).max(-1),
        "kl_or": kl(lo, lrs), "kl_ro": kl(lrs, lo), "js": js(lo, lrs),
        "spear": np.array([1.0 - spearman(order, row) for row in r]),
        "kendall": np.array([1.0 - kendall(order, row) for row in r]),
        "flip": (ids[:, 0] != ref_lr.argmax(-1)).astype(np.float64),
        "missmass": np.maximum(ref_top_mass - mass, 0.0),
        "miss": np.array([1.0 - len(np.intersect1d(a, b)) / k for a, b in zip(ids, ref_top)]),
    }


def names(tier: str) -> list[str]:
    t = tier
    out = [f"{t}.{q}" for q, _ in _REL] + [f"{t}.{q}" for q in _RAW]
    out += [f"{t}.js.{b}" for b in P.QUARTER_LABELS]
    out += [f"{t}.js.{b}" for b in P.DIST_LABELS] + [f"{t}.frac.{b}" for b in P.DIST_LABELS]
    return out


def compute(obs, ref, noise_obs, tier: str, probe=None) -> dict[str, float]:
    """Features of an observation restricted to a ``topk-k`` tier."""
    k = topk_of(tier)
    ref_lr = ref.ref.logprobs()
    q = per_step(*support(obs, k), ref_lr)
    n = per_step(*support(noise_obs, k), ref_lr) if noise_obs is not None else None
    floor = {key: (safe_mean(n[key]) if n is not None else 0.0) for key in q}
    out = {f"{tier}.{key}": rel(safe_mean(q[key]), floor[key], EPS[e]) for key, e in _REL}
    for key in _RAW:
        out[f"{tier}.{key}"] = safe_mean(q[key])
    out.update(P.js_profiles(tier, q["js"], len(obs.prompt_ids), probe, floor["js"],
                             lambda m, f: rel(m, f, EPS["js"])))
    return out
