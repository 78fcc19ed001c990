"""How much of an observation's departure a candidate explains once serving noise is allowed for.

An endpoint served in bf16 departs from the float32 reference by its scheme's effect *plus* the
dtype's effect. Much of the dtype's effect is reproducible: it comes from rounding the same weights
the same way, so kvfp's own bf16 replay of ``none`` (the noise yardstick) shows most of it on the
very same tokens. With ``D`` the observation's departure from the reference, ``N`` the noise
replay's and ``C`` candidate ``c``'s (all on the tier's support, see below):

* ``r0 = min_a |D − a N|²`` — what no scheme explains (``a`` ≈ 1 for a bf16 endpoint, ≈ 0 for a
  float32 one; an implementation whose noise is of another kind leaves it in the residual);
* ``gain[c] = log((r0 + ε) / (min_a |D − a N − C|² + ε))`` — the log factor by which subtracting
  ``c``'s own departure, at its own size, shrinks that residual. Under a Gaussian residual this is
  a scaled log-likelihood ratio of ``c`` against ``none``: positive when ``c`` explains the
  observation, 0 for ``none``, negative for a scheme that would have moved the outputs further
  or elsewhere;
* ``expl[c] = 1 − min_{a,b} |D − a N − b C|² / r0`` — the fraction of the residual that ``c``'s
  *direction* explains at any size (``b`` free): robust to an implementation whose effect has the
  same shape but another magnitude.

Supports: ``logits`` — the full distribution, each step's log-probability differences centred
under the reference distribution and weighted by ``√p`` (the Fisher metric: ``|D|²/2`` is then the
KL divergence to second order, so improbable tokens whose logits wander do not dominate);
``topk-k`` — the returned ids, centred per step (invariant to each step's constant, as the top-k
features are); ``prompt`` — the prompt tokens' log-probabilities. The ``tokens`` tier has no scores
and gets none of these.
"""

from __future__ import annotations

import numpy as np

from kvfp.fingerprint.features.common import logsoftmax
from kvfp.fingerprint.features.prompt import as_array
from kvfp.fingerprint.features.topk import centred_on, support
from kvfp.fingerprint.observation import topk_of

TIERS_WITH_SCORES = ("logits", "topk", "prompt")
_TINY = 1e-30


def names(tier: str, candidates: list[str]) -> list[str]:
    return [f"cand.{tier}.gain[{c}]" for c in candidates] + [f"cand.{tier}.expl[{c}]" for c in candidates]


def _fisher(lp: np.ndarray, lr: np.ndarray, w: np.ndarray, p: np.ndarray) -> np.ndarray:
    d = lp - lr
    return w * (d - (p * d).sum(-1, keepdims=True))


def departures(obs, ref, tier: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """``(D, N, {c: C})`` flattened on the tier's support; ``N`` is ``None`` without a noise replay."""
    lr = ref.ref.logprobs()
    noise_lr = ref.noise.logprobs() if ref.noise is not None else None
    if tier == "logits":
        p = np.exp(lr)
        w = np.sqrt(p)

        def dep(x):
            return _fisher(x, lr, w, p).ravel()

        D = dep(logsoftmax(obs.logits))
        N = dep(noise_lr) if noise_lr is not None else None
        cands = {c: dep(rep.logprobs()) for c, rep in ref.candidates.items()}
    elif tier.startswith("topk-"):
        sup = support(obs, topk_of(tier))
        r_on = centred_on(sup, sup.on(lr))

        def dep_on(x):  # the returned entries only, step by step in rank order (a partial row is shorter)
            return (centred_on(sup, sup.on(x)) - r_on)[sup.mask]

        D = (centred_on(sup, sup.lps) - r_on)[sup.mask]
        N = dep_on(noise_lr) if noise_lr is not None else None
        cands = {c: dep_on(rep.logprobs()) for c, rep in ref.candidates.items()}
    elif tier == "prompt":
        o = as_array(obs.prompt_logprobs)
        r = np.asarray(ref.ref.prompt_logprobs, dtype=np.float64)
        ok = np.isfinite(o) & np.isfinite(r)
        nz = None
        if ref.noise is not None and ref.noise.prompt_logprobs is not None:
            nz = np.asarray(ref.noise.prompt_logprobs, dtype=np.float64)
            ok &= np.isfinite(nz)
        pcs = {c: np.asarray(rep.prompt_logprobs, dtype=np.float64) for c, rep in ref.candidates.items()}
        for pc in pcs.values():
            ok &= np.isfinite(pc)
        D = o[ok] - r[ok]
        N = nz[ok] - r[ok] if nz is not None else None
        cands = {c: pc[ok] - r[ok] for c, pc in pcs.items()}
    else:
        raise ValueError(f"tier {tier!r} has no scores to explain")
    return D, N, cands


def _resid(D: np.ndarray, basis: list[np.ndarray]) -> float:
    """Squared residual of ``D`` after least squares on the columns of ``basis`` (one or two).

    The coefficients come from the columns' small Gram system (pseudo-inverse: collinear columns
    are fine) and the residual is computed from ``D`` itself, so its precision is ``D``'s; an
    SVD of the tall ``(n, k)`` matrix gives the same residual at many times the cost."""
    cols = [b for b in basis if float(b @ b) > _TINY]
    if not cols:
        return float(D @ D)
    G = np.array([[float(a @ b) for b in cols] for a in cols])
    coef = np.linalg.pinv(G, hermitian=True) @ np.array([float(a @ D) for a in cols])
    r = D - sum(c * a for c, a in zip(coef, cols))
    return float(r @ r)


def compute(obs, ref, tier: str) -> dict[str, float]:
    """``gain`` and ``expl`` of every candidate of ``ref`` at ``tier`` (see the module docstring)."""
    D, N, cands = departures(obs, ref, tier)
    base = [N] if N is not None else []
    r0 = _resid(D, base)
    # a floor on the residuals relative to the observation's own size: an exact replay gives a
    # residual of 0, another implementation a small positive one; both should read "explained"
    eps = 1e-6 * float(D @ D) + _TINY
    out_gain, out_expl = {}, {}
    for c, C in cands.items():
        r1 = _resid(D - C, base)  # C at its own size, the noise's weight free
        out_gain[f"cand.{tier}.gain[{c}]"] = float(np.log((r0 + eps) / (r1 + eps)))
        out_expl[f"cand.{tier}.expl[{c}]"] = float(1.0 - _resid(D, base + [C]) / (r0 + eps)) if r0 > 0 else 1.0
    return {**out_gain, **out_expl}
