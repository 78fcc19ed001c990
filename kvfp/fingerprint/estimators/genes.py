"""``GeneHeads``: describe a scheme by its gene, field by field (SCHEMES.md).

A scheme kvfp has never seen can still be described ("token-level eviction, attention-score
importance, about 20 % budget") when every design choice has its own head, trained across all
schemes that share it. Three kinds of head, all linear on the standardised features:

* ``class`` — one value among several (``algorithm``, ``strategy``, ``importance``, ``phase``):
  calibrated multinomial logistic regression, as :class:`SchemeClassifier`;
* ``set`` — any number of values (``granularity``, ``compensation``, written ``"a+b"``; ``""`` for
  none): one binary logistic regression per value;
* ``reg`` — a number (``log2_bits``, ``budget``…; NaN where the scheme has no such parameter):
  ridge regression on the rows that have it, plus a logistic "has this parameter" head, so that
  an estimate is only given where the parameter applies.

A head whose training column holds a single value predicts it with certainty.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

from kvfp.fingerprint.estimators import linear

KINDS = ("class", "set", "reg")


class GeneHeads(BaseEstimator):
    """One head per target column.

    Parameters
    ----------
    heads : sequence of ``(name, kind)``, one per column of ``Y``, ``kind`` in ``class``, ``set``,
        ``reg``; ``None`` makes every column a ``reg`` head named ``y0, y1, …``
    C : inverse regularisation of the logistic heads
    alpha : ridge penalty of the ``reg`` heads
    cv : folds for the temperature of the ``class`` heads
    max_iter, random_state : as :class:`SchemeClassifier`

    Attributes
    ----------
    heads_ : list of ``(name, kind)``
    labels_ : ``{name: [values]}`` for ``class`` heads, ``{name: [elements]}`` for ``set`` heads
    mean_, scale_ : ``(d,)``
    coef_, intercept_ : ``{key: array}``: ``(K, d)``/``(K,)`` for ``class`` heads, ``(E, d)``/``(E,)``
        for ``set`` heads (one binary logit per element), ``(1, d)``/``(1,)`` for ``reg`` heads and
        ``(1, d)``/``(1,)`` under ``"name?"`` for their "applies" logit
    temperature_ : ``{name: T}`` of ``class`` heads
    range_ : ``{name: [lo, hi]}`` of ``reg`` heads: the span of the targets seen in training,
        widened by half of it on each side. Estimates are clipped to it: a linear head
        extrapolates without bound on samples unlike its training set (an estimate of 2^1024
        bits overflowed), while a scheme just outside the trained values should still be told
    """

    _state_arrays = ("mean_", "scale_")
    _state_array_dicts = ("coef_", "intercept_")
    _state_json = ("heads_", "labels_", "temperature_", "range_", "n_features_in_", "feature_names_in_")
    _state_children = ()

    def __init__(self, heads=None, C=1.0, alpha=1.0, cv=5, max_iter=2000, random_state=0):
        self.heads = heads
        self.C = C
        self.alpha = alpha
        self.cv = cv
        self.max_iter = max_iter
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = False
        return tags

    def fit(self, X, Y, groups=None):
        """Fit every head; ``groups`` makes the calibration folds of ``class`` heads hold out whole groups."""
        if Y is None:
            raise ValueError("GeneHeads requires y to be passed, but the target y is None")
        X = validate_data(self, X, dtype=np.float64)
        Y = np.asarray(Y, dtype=object)
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        if Y.ndim != 2 or len(Y) != len(X):
            raise ValueError(f"Y must be 2D with one row per sample ({len(X)}), got shape {Y.shape}")
        heads = [(f"y{j}", "reg") for j in range(Y.shape[1])] if self.heads is None else \
            [(str(n), str(k)) for n, k in self.heads]
        if len(heads) != Y.shape[1]:
            raise ValueError(f"Y has {Y.shape[1]} columns but {len(heads)} heads are declared")
        for n, k in heads:
            if k not in KINDS:
                raise ValueError(f"head {n!r}: kind {k!r} is not one of {KINDS}")
        self.heads_ = heads
        self.mean_, self.scale_ = linear.fit_scaler(X)
        Xs = (X - self.mean_) / self.scale_
        self.labels_, self.coef_, self.intercept_, self.temperature_, self.range_ = {}, {}, {}, {}, {}
        for j, (name, kind) in enumerate(heads):
            col = Y[:, j]
            if kind == "class":
                self._fit_class(name, Xs, np.array([str(v) for v in col]), groups)
            elif kind == "set":
                self._fit_set(name, Xs, [_split(v) for v in col])
            else:
                self._fit_reg(name, Xs, np.array([_num(v) for v in col], dtype=np.float64))
        return self

    def _fit_class(self, name, Xs, col, groups):
        labels, yi = np.unique(col, return_inverse=True)
        self.labels_[name] = labels.tolist()
        c, b, _ = linear.fit_logistic(Xs, yi, len(labels), self.C, self.max_iter, self.random_state)
        self.coef_[name], self.intercept_[name] = c, b
        t = 1.0
        if len(labels) > 1:
            K = len(labels)
            oof = linear.out_of_fold_logits(
                Xs, yi, K, self.cv, self.random_state, groups,
                fit=lambda Xa, ya: linear.fit_logistic(Xa, ya, K, self.C, self.max_iter, self.random_state)[:2],
                predict=lambda Xb, w: Xb @ w[0].T + w[1])
            t = linear.fit_temperature(oof, yi) if oof is not None else 1.0
        self.temperature_[name] = t

    def _binary(self, Xs, present: np.ndarray) -> tuple[np.ndarray, float]:
        """Weights ``(d,)`` and bias of the logit of ``present``; a constant column gives ±30."""
        if present.all() or not present.any():
            return np.zeros(Xs.shape[1]), 30.0 if present.all() else -30.0
        c, b, _ = linear.fit_logistic(Xs, present.astype(np.int64), 2, self.C, self.max_iter, self.random_state)
        return c[1] - c[0], float(b[1] - b[0])

    def _fit_set(self, name, Xs, sets):
        elements = sorted({e for s in sets for e in s})
        self.labels_[name] = elements
        W, B = np.zeros((len(elements), Xs.shape[1])), np.zeros(len(elements))
        for i, e in enumerate(elements):
            W[i], B[i] = self._binary(Xs, np.array([e in s for s in sets]))
        self.coef_[name], self.intercept_[name] = W, B

    def _fit_reg(self, name, Xs, col):
        has = np.isfinite(col)
        w, b = self._binary(Xs, has)
        self.coef_[name + "?"], self.intercept_[name + "?"] = w[None, :], np.array([b])
        if has.sum() >= 2 and np.ptp(col[has]) > 0:
            w, b = linear.fit_ridge(Xs[has], col[has], self.alpha)
        else:  # no spread to learn from: the one value seen (or 0 when none applies)
            w, b = np.zeros(Xs.shape[1]), float(col[has][0]) if has.any() else 0.0
        self.coef_[name], self.intercept_[name] = w[None, :], np.array([b])
        lo, hi = (float(col[has].min()), float(col[has].max())) if has.any() else (b, b)
        self.range_[name] = [lo - (hi - lo) / 2, hi + (hi - lo) / 2]

    # -- prediction ---------------------------------------------------------------------------

    def _standardise(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return (X - self.mean_) / self.scale_

    def _logit(self, key, Xs):
        return Xs @ self.coef_[key].T + self.intercept_[key]

    def head_outputs(self, X) -> dict[str, dict[str, np.ndarray]]:
        """Raw outputs of every head: ``class`` → ``{"proba": (n, K)}``; ``set`` → ``{"proba": (n, E)}``
        (each element's own probability); ``reg`` → ``{"value": (n,), "applies": (n,)}``."""
        return self._outputs(self._standardise(X))

    def _outputs(self, Xs):
        out = {}
        for name, kind in self.heads_:
            if kind == "class":
                out[name] = {"proba": linear.softmax(self._logit(name, Xs) / self.temperature_[name])}
            elif kind == "set":
                out[name] = {"proba": _sigmoid(self._logit(name, Xs))}
            else:
                lo, hi = self.range_[name]
                out[name] = {"value": np.clip(self._logit(name, Xs)[:, 0], lo, hi),
                             "applies": _sigmoid(self._logit(name + "?", Xs))[:, 0]}
        return out

    def predict(self, X):
        """``(n, heads)``: the label, the ``+``-joined set, or the estimate (NaN where the parameter
        does not apply). Float when every head is ``reg``, else object."""
        Xs = self._standardise(X)
        outs, n = self._outputs(Xs), len(Xs)
        all_reg = all(k == "reg" for _, k in self.heads_)
        Y = np.empty((n, len(self.heads_)), dtype=np.float64 if all_reg else object)
        for j, (name, kind) in enumerate(self.heads_):
            o = outs[name]
            if kind == "class":
                Y[:, j] = np.array(self.labels_[name], dtype=object)[o["proba"].argmax(1)]
            elif kind == "set":
                els = self.labels_[name]
                Y[:, j] = ["+".join(e for e, p in zip(els, row) if p >= 0.5) for row in o["proba"]]
            else:
                Y[:, j] = np.where(o["applies"] >= 0.5, o["value"], np.nan)
        return Y

    def describe(self, X) -> list[dict]:
        """Per sample ``{head: {...}}``: ``class`` → ``value`` and ``proba`` (label → p); ``set`` →
        ``value`` (elements with p ≥ ½) and ``proba``; ``reg`` → ``value`` (``None`` where it does
        not apply) and ``applies`` (its probability)."""
        Xs = self._standardise(X)
        outs, rows = self._outputs(Xs), []
        for i in range(len(Xs)):
            row = {}
            for name, kind in self.heads_:
                o = outs[name]
                if kind in ("class", "set"):
                    proba = {lab: float(p) for lab, p in zip(self.labels_[name], o["proba"][i])}
                    if kind == "class":
                        value = max(proba, key=proba.get)
                    else:
                        value = [e for e, p in proba.items() if p >= 0.5]
                    row[name] = {"value": value, "proba": proba}
                else:
                    a = float(o["applies"][i])
                    row[name] = {"value": float(o["value"][i]) if a >= 0.5 else None, "applies": a}
            rows.append(row)
        return rows


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _split(v) -> set[str]:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return set()
    if isinstance(v, (list, tuple, set, frozenset)):
        return {str(e) for e in v}
    return {e for e in str(v).split("+") if e}


def _num(v) -> float:
    if v is None:
        return np.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"a 'reg' head needs numbers (or NaN/None where the parameter does not apply), got {v!r}") \
            from None
