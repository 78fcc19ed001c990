"""Linear building blocks whose fitted state is plain arrays (so it saves without pickle).

scikit-learn does the optimisation; only the resulting arrays are kept: scaler means and scales,
coefficient matrices, intercepts, temperatures. Every estimator of this package predicts from
these arrays with numpy, so a saved and reloaded estimator predicts exactly as the fitted one.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GroupKFold, StratifiedKFold


def fit_scaler(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and scale ``(d,)`` of ``(n, d)`` ``X``; constant columns get scale 1."""
    mean = X.mean(0)
    scale = X.std(0)
    scale[~(scale > 1e-12)] = 1.0
    return mean, scale


def fit_logistic(Xs: np.ndarray, yi: np.ndarray, n_classes: int, C: float, max_iter: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Multinomial logistic regression on standardised ``Xs`` ``(n, d)`` with labels ``0..K-1``.

    Returns ``coef (K, d)``, ``intercept (K,)`` and the optimiser's iteration count; softmax of
    ``Xs @ coef.T + intercept`` is the model's probability. A label that never occurs gets a very
    negative intercept; one class gets a constant model (0 iterations).
    """
    d = Xs.shape[1]
    coef, intercept = np.zeros((n_classes, d)), np.full(n_classes, -30.0)
    present = np.unique(yi)
    if len(present) == 1:
        intercept[present[0]] = 0.0
        return coef, intercept, 0
    lr = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        # an unconverged fit is still a usable, deterministic model; calibration absorbs the rest
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr.fit(Xs, yi)
    if len(present) == 2:  # sklearn keeps one row for two classes: the second class's logit
        coef[present[1]], intercept[present[1]] = lr.coef_[0], lr.intercept_[0]
        intercept[present[0]] = 0.0
    else:
        coef[present], intercept[present] = lr.coef_, lr.intercept_
    return coef, intercept, int(np.max(lr.n_iter_))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def fit_temperature(logits: np.ndarray, yi: np.ndarray) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al., 2017)."""
    def nll(log_t):
        return -log_softmax(logits / np.exp(log_t))[np.arange(len(yi)), yi].mean()

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(50.0)), method="bounded")
    return float(np.exp(res.x))


def folds(yi: np.ndarray, cv: int, seed: int = 0, groups=None) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Train/test index pairs for out-of-fold estimates, or ``None`` when nothing can be held out.

    With ``groups`` (e.g. the probe each sample answers), whole groups are held out together:
    two observations of one probe are more alike than two probes, and a held-out estimate should
    be made on probes the model has not seen. Otherwise folds are stratified by class, which
    needs every class to have at least two samples.
    """
    if groups is not None:
        g = np.asarray(groups)
        if len(g) != len(yi):
            raise ValueError(f"groups has {len(g)} entries for {len(yi)} samples")
        n_groups = len(np.unique(g))
        if n_groups >= 2:
            return list(GroupKFold(n_splits=min(cv, n_groups)).split(yi, yi, g))
    counts = np.bincount(yi)
    k = int(min(cv, counts[counts > 0].min()))
    if k < 2:
        return None
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(yi, yi))


def out_of_fold_logits(Xs: np.ndarray, yi: np.ndarray, n_classes: int, cv: int, seed: int = 0, groups=None, *,
                       fit, predict) -> np.ndarray | None:
    """Logits ``(n, K)`` of each sample from a model that did not see it (see :func:`folds`), or
    ``None`` when nothing can be held out. ``fit(Xs, yi)`` returns a model's arrays and
    ``predict(Xs, arrays)`` its logits."""
    split = folds(yi, cv, seed, groups)
    if split is None:
        return None
    out = np.zeros((len(yi), n_classes))
    for tr, te in split:
        out[te] = predict(Xs[te], fit(Xs[tr], yi[tr]))
    return out


def fit_ridge(Xs: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge regression ``(d,)`` coefficients and intercept on standardised ``Xs``."""
    r = Ridge(alpha=alpha).fit(Xs, y)
    return np.asarray(r.coef_, dtype=np.float64).reshape(-1), float(r.intercept_)
