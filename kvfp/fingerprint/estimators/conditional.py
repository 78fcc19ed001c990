"""Multinomial logistic regression with shared weights on per-class candidate features.

A plain multinomial model learns, class by class, that "``fit[c]`` is small" means class ``c``:
one coefficient per class and feature, from the few training probes each class has (7 in the
quick protocol). But every candidate feature means the same thing for every class it simulates:
``gain[c]`` is how much scheme ``c``'s own replay explains the observation. A conditional logit
(McFadden 1974) uses that: class ``k``'s logit is

    z_k(x) = W_k · x + b_k + Σ_j θ_j ψ_j(x, k)

where ``ψ_j(x, k)`` is the (standardised) candidate feature of kind ``j`` (``cand.logits.gain``,
``cand.logits.fit``, …) that simulates class ``k``, 0 when ``k`` is not simulated. The few
weights ``θ`` are shared by every class, so every training row teaches them, and they even score
a class with no training rows the same way. ``W`` keeps what only the generic features show.

The objective is scikit-learn's with a lighter penalty on the shared weights, which every row
informs: ``C · Σ NLL + ½‖W‖² + ½ λ‖θ‖²`` (λ = ``THETA_PENALTY``; intercepts unpenalised),
minimised by L-BFGS with the analytic gradient.
"""

from __future__ import annotations

import re

import numpy as np
from scipy.optimize import minimize

THETA_PENALTY = 0.01
_CAND = re.compile(r"^(cand\..+)\[(.+)\]$")


def candidate_index(names, classes) -> np.ndarray:
    """``(K, m)`` int: the column of candidate feature kind ``j`` simulating class ``k``, or -1.

    Kinds are the ``cand.<tier>.<kind>`` prefixes of ``names`` that name at least one class, in
    order of first appearance; ``m`` is 0 when no feature names a class.
    """
    labels = {str(c): k for k, c in enumerate(np.asarray(classes).tolist())}
    kinds: list[str] = []
    cells = []
    for j, name in enumerate(names):
        m = _CAND.match(str(name))
        if m and m.group(2) in labels:
            if m.group(1) not in kinds:
                kinds.append(m.group(1))
            cells.append((labels[m.group(2)], kinds.index(m.group(1)), j))
    idx = np.full((len(labels), len(kinds)), -1, dtype=np.int64)
    for k, kind, j in cells:
        idx[k, kind] = j
    return idx


def psi(Xs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``(n, K, m)`` per-class candidate features (0 where a class is not simulated)."""
    out = Xs[:, np.maximum(idx, 0)]  # (n, K, m)
    out[:, idx < 0] = 0.0
    return out


def logits(Xs, coef, intercept, theta, idx) -> np.ndarray:
    z = Xs @ coef.T + intercept
    if idx.shape[1]:
        z = z + psi(Xs, idx) @ theta
    return z


def fit(Xs: np.ndarray, yi: np.ndarray, n_classes: int, C: float, max_iter: int, idx: np.ndarray):
    """``(coef (K, d), intercept (K,), theta (m,), iterations)`` (see the module docstring)."""
    n, d = Xs.shape
    K, m = n_classes, idx.shape[1]
    P = psi(Xs, idx)
    Y = np.zeros((n, K))
    Y[np.arange(n), yi] = 1.0

    def unpack(w):
        return w[: K * d].reshape(K, d), w[K * d: K * d + K], w[K * d + K:]

    def f(w):
        W, b, th = unpack(w)
        z = Xs @ W.T + b + (P @ th if m else 0.0)
        z = z - z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        nll = float((lse - (z * Y).sum(1)).sum())
        G = np.exp(z - lse[:, None]) - Y  # (n, K)
        gW = C * (G.T @ Xs) + W
        gb = C * G.sum(0)
        gth = C * np.einsum("nk,nkm->m", G, P) + THETA_PENALTY * th if m else np.zeros(0)
        val = C * nll + 0.5 * float((W * W).sum()) + 0.5 * THETA_PENALTY * float(th @ th)
        return val, np.concatenate([gW.ravel(), gb, gth])

    res = minimize(f, np.zeros(K * d + K + m), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": 1e-6})
    W, b, th = unpack(res.x)
    absent = np.bincount(yi, minlength=K) == 0
    # a class no training row has keeps its shared-weight score; only its intercept is unknown,
    # and without rows the optimiser drifts it down without end: pin it at the lowest seen
    if absent.any() and (~absent).any():
        b = b.copy()
        b[absent] = b[~absent].min()
    return W.copy(), b, th.copy(), int(res.nit)
