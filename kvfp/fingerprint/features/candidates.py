"""Distance from the observation to each candidate scheme simulated on the same tokens.

kvfp replays the observed tokens under every candidate scheme; if the endpoint runs scheme ``c``,
the observation should sit next to ``c``'s replay and far from the others. Two numbers per
candidate and tier:

* ``fit`` — the tier's divergence between observation and candidate, in units of the noise floor:
  ``log1p(d(obs, c) / (d(noise, ref) + ε))``. The floor is the divergence a benign serving change
  (bf16 with sdpa instead of float32 eager, :data:`kvfp.fingerprint.reference.NOISE`) causes on the
  same tokens. An observation produced by kvfp's exact numerics (distance exactly 0) and one from an
  independent implementation or another dtype (distance near the noise level) thus land within
  ``log 2`` of each other: a classifier cannot key on exact zeros.
* ``corr`` — a matched filter: the cosine between the observation's departure from the reference
  and the candidate's departure from the reference (centred logit differences on the tier's
  support; prompt-logprob differences), shrunk by ``|d|²/(|d|² + |noise|²)`` so that the direction
  of a departure no larger than the serving noise counts for little. The noise is not aligned with
  any scheme's departure, so the right scheme scores high even when its effect is comparable to the
  noise. For ``tokens`` the second number is the mean log-likelihood ratio of the observed tokens,
  candidate vs reference (``llr``).

Per tier, also the smallest ``fit`` and the gap to the second smallest: how clearly one candidate
explains the observation (what the open-set test leans on). Tiers with scores add, per candidate,
the noise-aware ``gain`` and ``expl`` of :mod:`kvfp.fingerprint.features.explain`.
"""

from __future__ import annotations

import numpy as np

from kvfp.fingerprint.features import explain
from kvfp.fingerprint.features.common import EPS, centred, corr, js, logsoftmax, rel, safe_mean
from kvfp.fingerprint.features.prompt import as_array
from kvfp.fingerprint.features.tokens import margins
from kvfp.fingerprint.features.topk import centred_on, departure, restricted_js, support
from kvfp.fingerprint.observation import topk_of

# which per-tier family the candidate distances use, and the name of the second number
SECOND = {"logits": "corr", "topk": "corr", "prompt": "corr", "tokens": "llr"}


def _family(tier: str) -> str:
    return "topk" if tier.startswith("topk-") else tier


def names(tier: str, candidates: list[str]) -> list[str]:
    second = SECOND[_family(tier)]
    out = [f"cand.{tier}.fit[{c}]" for c in candidates] + [f"cand.{tier}.{second}[{c}]" for c in candidates]
    out += [f"cand.{tier}.fitmin", f"cand.{tier}.fitgap"]
    return out + (explain.names(tier, candidates) if _family(tier) in explain.TIERS_WITH_SCORES else [])


def _scores(obs, ref, noise_obs, tier: str) -> tuple[dict[str, float], dict[str, float]]:
    fam = _family(tier)
    lr = ref.ref.logprobs()
    fit, second = {}, {}
    if fam == "logits":
        lo = logsoftmax(obs.logits)
        floor, noise2 = 0.0, 0.0
        if noise_obs is not None:
            ln = logsoftmax(noise_obs.logits)
            floor, noise2 = safe_mean(js(ln, lr)), _sq(centred(ln - lr))
        do = centred(lo - lr)
        w = _above(do, noise2)
        po = np.exp(lo)
        for c, rep in ref.candidates.items():
            lc = rep.logprobs()
            fit[c] = rel(safe_mean(js(lo, lc, po)), floor, EPS["js"])
            second[c] = w * corr(do, centred(lc - lr))
    elif fam == "topk":
        k = topk_of(tier)
        sup = support(obs, k)
        floor, noise2 = 0.0, 0.0
        if noise_obs is not None:
            nsup = support(noise_obs, k)
            floor = safe_mean(restricted_js(nsup, lr))
            # the noise's squares per returned entry, times the entries the observation returned: a
            # partial observation sums fewer squares than the (full) noise replay does; the factor is
            # exactly 1 when both are full
            noise2 = _sq(departure(nsup, lr)) * (int(sup.mask.sum()) / max(int(nsup.mask.sum()), 1))
        do = departure(sup, lr)  # zero on the padding of short rows: sums and cosines skip it
        w = _above(do, noise2)
        r_on = centred_on(sup, sup.on(lr))
        for c, rep in ref.candidates.items():
            lc = rep.logprobs()
            fit[c] = rel(safe_mean(restricted_js(sup, lc)), floor, EPS["js"])
            second[c] = w * corr(do, centred_on(sup, sup.on(lc)) - r_on)
    elif fam == "prompt":
        o = as_array(obs.prompt_logprobs)
        r = np.asarray(ref.ref.prompt_logprobs, dtype=np.float64)
        ok = np.isfinite(o) & np.isfinite(r)
        floor = 0.0
        if noise_obs is not None:
            nz = as_array(noise_obs.prompt_logprobs)
            okn = ok & np.isfinite(nz)
            floor = safe_mean((nz[okn] - r[okn]) ** 2)
        w = _above(o[ok] - r[ok], floor * ok.sum())
        for c, rep in ref.candidates.items():
            pc = np.asarray(rep.prompt_logprobs, dtype=np.float64)
            okc = ok & np.isfinite(pc)
            fit[c] = rel(safe_mean((o[okc] - pc[okc]) ** 2), floor, EPS["lp2"])
            second[c] = w * corr(o[okc] - r[okc], pc[okc] - r[okc])
    else:  # tokens
        y = np.asarray(obs.output_ids, dtype=np.int64)
        steps = np.arange(len(y))
        # the floor comes from the noise replay itself (ours, not the endpoint's): this tier has no logits
        floor = safe_mean(margins(y, ref.noise.logprobs())) if ref.noise is not None else 0.0
        for c, rep in ref.candidates.items():
            lc = rep.logprobs()
            fit[c] = rel(safe_mean(lc.max(-1) - lc[steps, y]), floor, EPS["margin"])
            second[c] = safe_mean(lc[steps, y] - lr[steps, y])
    return fit, second


def _sq(x: np.ndarray) -> float:
    return float((np.asarray(x, dtype=np.float64) ** 2).sum())


def _above(do: np.ndarray, noise2: float) -> float:
    """``|do|² / (|do|² + |noise|²)``: the direction of a departure at the noise level means little,
    so its cosine is shrunk towards 0 (to ½ at the noise level, to 0 for an exact replay)."""
    d2 = _sq(do)
    return d2 / (d2 + noise2) if d2 + noise2 > 0 else 0.0


def compute(obs, ref, noise_obs, tier: str) -> dict[str, float]:
    """Candidate features of an observation restricted to ``tier`` (the candidates of ``ref``)."""
    fit, second = _scores(obs, ref, noise_obs, tier)
    name2 = SECOND[_family(tier)]
    out = {f"cand.{tier}.fit[{c}]": v for c, v in fit.items()}
    out.update({f"cand.{tier}.{name2}[{c}]": v for c, v in second.items()})
    vals = np.sort(np.array(list(fit.values()), dtype=np.float64))
    out[f"cand.{tier}.fitmin"] = float(vals[0]) if len(vals) else 0.0
    out[f"cand.{tier}.fitgap"] = float(vals[1] - vals[0]) if len(vals) > 1 else 0.0
    if _family(tier) in explain.TIERS_WITH_SCORES:
        out.update(explain.compute(obs, ref, tier))
    return out
