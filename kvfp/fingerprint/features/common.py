"""Numerics shared by the feature families: log-softmax, divergences, rank correlations, ratios.

Everything runs in float64 on numpy arrays; nothing here returns NaN or infinity for finite input.
"""

from __future__ import annotations

import numpy as np

# Floors that keep ratios finite where a noise yardstick is exactly zero (identical numerics).
EPS = {"js": 1e-9, "kl": 1e-9, "logit": 1e-6, "lp2": 1e-8, "margin": 1e-3}


def logsoftmax(x: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, float64."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def kl(la: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """KL(a‖b) over the last axis from log-probabilities ``(..., n)`` → ``(...)``; never negative."""
    return np.maximum((np.exp(la) * (la - lb)).sum(-1), 0.0)


def js(la: np.ndarray, lb: np.ndarray, pa: np.ndarray | None = None, pb: np.ndarray | None = None) -> np.ndarray:
    """Jensen–Shannon divergence (nats) from log-probabilities ``(..., n)`` → ``(...)``.

    ``pa``/``pb`` are ``exp(la)``/``exp(lb)`` when the caller already has them: one comparison
    against many candidates then costs one ``exp`` and one ``log`` per entry, not four."""
    pa = np.exp(la) if pa is None else pa
    pb = np.exp(lb) if pb is None else pb
    # where both probabilities underflow, both terms are 0 × finite: the floor only keeps the log finite
    lm = np.log(np.maximum(0.5 * (pa + pb), np.finfo(np.float64).tiny))
    return np.maximum(0.5 * (pa * (la - lm)).sum(-1) + 0.5 * (pb * (lb - lm)).sum(-1), 0.0)


def centred(x: np.ndarray) -> np.ndarray:
    """Subtract the mean over the last axis: removes the per-position constant of logprobs."""
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(-1, keepdims=True)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Uncentred cosine of two departure vectors; 0 when either is zero (no departure to match)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    na, nb = float(a @ a), float(b @ b)
    if na <= 0.0 or nb <= 0.0:
        return 0.0
    return float(np.clip((a @ b) / np.sqrt(na * nb), -1.0, 1.0))


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` (0 = smallest), ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return sums[inv] / counts[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation; 1 when either side is constant (no order to disagree with)."""
    ra, rb = centred(ranks(a)), centred(ranks(b))
    na, nb = float(ra @ ra), float(rb @ rb)
    if na <= 0.0 or nb <= 0.0:
        return 1.0
    return float(np.clip(ra @ rb / np.sqrt(na * nb), -1.0, 1.0))


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a over all pairs (k ≤ a few dozen here, so the O(k²) form is fine)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    if n < 2:
        return 1.0
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(n, 1)
    return float((da[iu] * db[iu]).sum() / len(iu[0]))


def rel(value: float, floor: float, eps: float) -> float:
    """``log1p(value / floor)``: a non-negative departure measured in units of the noise floor.

    Exactly-zero departures (kvfp's own numerics) and departures at the noise level (another
    implementation, another dtype) land within ``[0, log 2]`` of each other instead of being
    separated by the gulf between 0 and a tiny positive number.
    """
    return float(np.log1p(max(value, 0.0) / (max(floor, 0.0) + eps)))


def safe_mean(x, default: float = 0.0) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else default
