"""``logits`` tier: the full next-token distribution against the reference replay.

Per step: KL both ways and Jensen–Shannon divergence, the spread and the largest entry of the
centred logit difference (the per-position constant removed), whether the argmax flipped, how much
of the reference's top 20 the observation keeps, and the entropy change (quantization noise
tends to flatten the distribution, eviction of the needed tokens to move its mass elsewhere).
Continuous departures are expressed in units of the noise yardstick's own departure
(:func:`kvfp.fingerprint.features.common.rel`).
"""

from __future__ import annotations

import numpy as np

from kvfp.fingerprint.features import profiles as P
from kvfp.fingerprint.features.common import EPS, centred, js, kl, logsoftmax, rel, safe_mean

TOP = 20
_REL = (("kl_or", "kl"), ("kl_ro", "kl"), ("js", "js"), ("cstd", "logit"), ("cmax", "logit"))


def per_step(obs_logits: np.ndarray, lr: np.ndarray) -> dict[str, np.ndarray]:
    """Per-step departures of ``(steps, vocab)`` logits from the reference's ``(steps, vocab)`` log-probs."""
    lo = logsoftmax(obs_logits)
    d = centred(lo - lr)  # (S, V): exact logit differences, constant per step removed
    k = min(TOP, lo.shape[-1])
    top_o = np.argpartition(-lo, k - 1, axis=-1)[:, :k]
    top_r = np.argpartition(-lr, k - 1, axis=-1)[:, :k]
    overlap = np.array([len(np.intersect1d(a, b)) / k for a, b in zip(top_o, top_r)])
    ent = lambda l: -(np.exp(l) * l).sum(-1)  # noqa: E731
    return {
        "kl_or": kl(lo, lr), "kl_ro": kl(lr, lo), "js": js(lo, lr),
        "cstd": d.std(-1), "cmax": np.abs(d).max(-1),
        "flip": (lo.argmax(-1) != lr.argmax(-1)).astype(np.float64),
        "miss20": 1.0 - overlap,
        "dent": ent(lo) - ent(lr),
    }


def names() -> list[str]:
    out = [f"logits.{q}" for q, _ in _REL] + ["logits.jsmax", "logits.flip", "logits.miss20", "logits.dent"]
    out += [f"logits.js.{b}" for b in P.QUARTER_LABELS]
    out += [f"logits.js.{b}" for b in P.DIST_LABELS] + [f"logits.frac.{b}" for b in P.DIST_LABELS]
    return out


def compute(obs, ref, noise_obs, probe=None) -> dict[str, float]:
    """Features of an observation restricted to the ``logits`` tier."""
    lr = ref.ref.logprobs()
    q = per_step(obs.logits, lr)
    n = per_step(noise_obs.logits, lr) if noise_obs is not None else None
    floor = {k: (safe_mean(n[k]) if n is not None else 0.0) for k in q}
    out = {f"logits.{k}": rel(safe_mean(q[k]), floor[k], EPS[e]) for k, e in _REL}
    out["logits.jsmax"] = rel(float(q["js"].max()), float(n["js"].max()) if n is not None else 0.0, EPS["js"])
    out["logits.flip"] = safe_mean(q["flip"])
    out["logits.miss20"] = safe_mean(q["miss20"])
    dent_floor = safe_mean(np.abs(n["dent"])) if n is not None else 0.0
    out["logits.dent"] = float(np.arcsinh(safe_mean(q["dent"]) / (dent_floor + 1e-4)))
    out.update(P.js_profiles("logits", q["js"], len(obs.prompt_ids), probe, floor["js"],
                             lambda m, f: rel(m, f, EPS["js"])))
    return out
