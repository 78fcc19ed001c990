"""The benchmark's figures as pure functions of numbers (numpy in, floats and dicts out).

Nothing here knows about models or observations, so every figure can be checked on synthetic
numbers with a known answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of positions where ``y_pred`` equals ``y_true`` (``(n,)`` each, ``n ≥ 1``)."""
    a, b = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal-length, non-empty label lists (got {a.shape} and {b.shape})")
    return float(np.mean(a == b))


def macro_f1(y_true: Sequence, y_pred: Sequence) -> float:
    """Unweighted mean of per-class F1 over every class that occurs in ``y_true`` or ``y_pred``
    (:func:`sklearn.metrics.f1_score` with ``average="macro"``; a class never predicted scores 0)."""
    from sklearn.metrics import f1_score

    a, b = [str(v) for v in y_true], [str(v) for v in y_pred]
    accuracy(a, b)  # same length checks
    return float(f1_score(a, b, average="macro", labels=sorted(set(a) | set(b)), zero_division=0.0))


def rate(flags: Sequence[bool]) -> float | None:
    """Fraction of true flags (``None`` for an empty list: nothing was measured)."""
    f = np.asarray(flags, dtype=bool)
    return float(f.mean()) if f.size else None


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve of scores where higher means "positive": the probability that a
    random positive outscores a random negative (ties count one half).

    Parameters
    ----------
    positive : ``(n_pos,)`` scores of positive samples, ``n_pos ≥ 1``
    negative : ``(n_neg,)`` scores of negative samples, ``n_neg ≥ 1``
    """
    from sklearn.metrics import roc_auc_score

    p = np.asarray(positive, dtype=np.float64).ravel()
    n = np.asarray(negative, dtype=np.float64).ravel()
    if p.size == 0 or n.size == 0:
        raise ValueError(f"AUROC needs at least one positive and one negative score (got {p.size} and {n.size})")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(n))):
        raise ValueError("AUROC scores must be finite")
    y = np.r_[np.ones(p.size), np.zeros(n.size)]
    return float(roc_auc_score(y, np.r_[p, n]))


def pooled_auroc(positive: Sequence[float], negative: Sequence[float], m: int, *, n_boot: int = 2000,
                 seed: int = 0) -> float:
    """AUROC of the sum of ``m`` per-observation scores, by a seeded bootstrap.

    Pooling ``m`` observations of one endpoint adds their evidence (the scores are log-likelihood
    ratios or alike). Each bootstrap draw sums ``m`` scores drawn with replacement from one class;
    ``n_boot`` draws per class give the two pooled distributions compared.

    Parameters
    ----------
    positive, negative : ``(n_pos,)``, ``(n_neg,)`` per-observation scores
    m : observations pooled (``m = 1`` is the plain AUROC up to resampling)
    """
    if m < 1 or n_boot < 1:
        raise ValueError(f"m and n_boot must be positive (got {m}, {n_boot})")
    p = np.asarray(positive, dtype=np.float64).ravel()
    n = np.asarray(negative, dtype=np.float64).ravel()
    if p.size == 0 or n.size == 0:
        raise ValueError("pooled AUROC needs scores of both classes")
    rng = np.random.default_rng([seed, m])
    sp = p[rng.integers(0, p.size, size=(n_boot, m))].sum(1)
    sn = n[rng.integers(0, n.size, size=(n_boot, m))].sum(1)
    return auroc(sp, sn)


def auroc_curve(scores: dict[int, tuple], pools: Sequence[int], *, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Pooled AUROC over a grid of (observation length ``t``, pool size ``m``).

    Parameters
    ----------
    scores : ``{t: (positive, negative, tokens_per_observation)}``: per-observation scores of the
        two classes when every observation is cut to its first ``t`` steps, and how many scored
        tokens one such observation holds (on average over both classes)
    pools : pool sizes ``m`` to try

    Returns
    -------
    ``[{"t", "m", "tokens", "auroc"}]`` with ``tokens = m × tokens_per_observation`` (rounded), in
    increasing ``tokens`` order
    """
    out = []
    for t, (pos, neg, per_obs) in scores.items():
        for m in pools:
            out.append({"t": int(t), "m": int(m), "tokens": int(round(m * per_obs)),
                        "auroc": pooled_auroc(pos, neg, m, n_boot=n_boot, seed=seed)})
    return sorted(out, key=lambda r: (r["tokens"], r["t"], r["m"]))


def tokens_needed(curve: Sequence[dict], target: float = 0.99) -> dict:
    """The fewest scored tokens reaching AUROC ≥ ``target`` on a curve from :func:`auroc_curve`.

    Returns
    -------
    ``{"reached": True, "tokens", "t", "m", "auroc"}`` for the cheapest point that reaches the
    target, else ``{"reached": False, "tokens": N, "t", "m", "auroc"}`` where ``N`` is the largest
    number of tokens tried and ``auroc`` the best AUROC among the points with ``N`` tokens
    (the figure reads "> N").
    """
    if not curve:
        raise ValueError("empty curve")
    hits = [r for r in curve if r["auroc"] >= target]
    if hits:
        best = min(hits, key=lambda r: (r["tokens"], -r["auroc"]))
        return {"reached": True, **{k: best[k] for k in ("tokens", "t", "m", "auroc")}}
    n_max = max(r["tokens"] for r in curve)
    best = max((r for r in curve if r["tokens"] == n_max), key=lambda r: r["auroc"])
    return {"reached": False, **{k: best[k] for k in ("tokens", "t", "m", "auroc")}}
