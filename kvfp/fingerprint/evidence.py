"""The evidence a verdict rests on, in a form a person can read: how far the observation departs
from the reference at each context position, beside how far a benign serving difference (the
bf16/sdpa noise replay of the same tokens) departs there.

Compression shows as a departure well above the noise line; eviction typically only past the
point where the cache starts dropping entries, quantization everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from kvfp.fingerprint.features.common import kl, logsoftmax
from kvfp.fingerprint.features.prompt import delta
from kvfp.fingerprint.features.tokens import margins
from kvfp.fingerprint.features.topk import departure, row_rms, support
from kvfp.fingerprint.observation import Observation, topk_of

MEASURES = {
    "logits": "KL(reference || observed) per generated token, nats",
    "topk": "RMS of the centred top-k logprob difference per generated token, nats",
    "prompt": "|observed - reference| prompt-token logprob, nats",
    "tokens": "reference's margin of its own choice over the observed token, nats",
}


def per_position(obs: Observation, ref_lr: np.ndarray, ref_plp, tier: str) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, values)``: the tier's departure measure of ``obs`` from a run whose per-step
    log-probs are ``ref_lr`` ``(steps, vocab)`` and prompt logprobs ``ref_plp``; positions are
    absolute context positions (the prompt's length plus the step for generated tokens)."""
    o = obs.restrict(tier)
    n = len(o.prompt_ids)
    steps = np.arange(o.steps) + n
    if tier == "logits":
        return steps, kl(ref_lr, logsoftmax(o.logits))
    k = topk_of(tier)
    if k is not None:
        sup = support(o, k)
        return steps, row_rms(sup, departure(sup, ref_lr))
    if tier == "prompt":
        pos, d = delta(o.prompt_logprobs, ref_plp)
        return pos, np.abs(d)
    # tokens: margins need logits; ref_lr are log-probs, which give the same margins
    return steps, margins(o.output_ids, ref_lr)


@dataclass
class Profile:
    """Departure against context position, binned."""

    measure: str
    edges: list[int]  # bin b covers positions [edges[b], edges[b+1])
    observed: list[float | None]  # mean departure of the observation(s) in each bin
    noise: list[float | None]  # the same for the benign noise replay (None: not available)
    counts: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def profile(observations, references, tier: str, bins: int = 8) -> Profile:
    """Pool the departures of many observations (with their
    :class:`~kvfp.fingerprint.reference.Reference`) into ``bins`` equal-width position bins."""
    obs_pts, noise_pts = [], []
    for o, r in zip(observations, references):
        lr = r.ref.logprobs()
        obs_pts.append(per_position(o, lr, r.ref.prompt_logprobs, tier))
        nob = r.noise_observation()
        if nob is not None and tier in nob.tiers():
            noise_pts.append(per_position(nob, lr, r.ref.prompt_logprobs, tier))
    pos = np.concatenate([p for p, _ in obs_pts]) if obs_pts else np.zeros(0)
    hi = int(pos.max()) + 1 if len(pos) else 1
    lo = int(pos.min()) if len(pos) else 0
    edges = np.unique(np.linspace(lo, hi, bins + 1).round().astype(int))

    def binned(pts):
        if not pts:
            return [None] * (len(edges) - 1), [0] * (len(edges) - 1)
        p = np.concatenate([a for a, _ in pts])
        v = np.concatenate([b for _, b in pts])
        idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
        means, counts = [], []
        for b in range(len(edges) - 1):
            sel = v[idx == b]
            counts.append(int(sel.size))
            means.append(float(sel.mean()) if sel.size else None)
        return means, counts

    observed, counts = binned(obs_pts)
    noise, _ = binned(noise_pts)
    key = "topk" if topk_of(tier) is not None else tier
    return Profile(measure=MEASURES[key], edges=edges.tolist(), observed=observed, noise=noise, counts=counts)
