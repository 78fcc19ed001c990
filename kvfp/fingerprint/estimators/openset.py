"""``OpenSetDetector``: does this sample fit any known scheme at all?

The novelty score of a sample is its distance to the nearest class centroid in the discriminant
(LDA) space: features whitened by the pooled within-class covariance, shrunk towards a scaled
identity so that it stays well-conditioned with few samples per class, then projected on the
``K − 1`` directions that separate the class centroids (Fisher's discriminant subspace; the
Mahalanobis-to-nearest-class recipe of Lee et al. 2018, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples", restricted to where the classes differ). Directions in which no
known scheme differs from another carry serving noise, not evidence, and are left out: on
kvfp-tiny this separated held-out schemes from known ones better than the full space. The
threshold is the ``1 − target_false_reject`` quantile of *out-of-fold* scores, so known schemes are
rejected at about the target rate on new data, not on the samples the centroids were fitted to.

Follows scikit-learn's outlier-detector convention: ``predict`` gives ``1`` (known) or ``-1``
(unknown), ``score_samples`` is higher for more typical samples (``-novelty``).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from kvfp.fingerprint.estimators import linear


def _fit_space(Xs: np.ndarray, yi: np.ndarray, K: int, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Class centroids ``(K, r)`` in the discriminant space and the projection ``(d, r)`` into it.

    The projection whitens by the symmetric inverse square root of the shrunk pooled within-class
    covariance and keeps the ``r = min(K − 1, d)`` directions spanned by the whitened centroids
    (all ``d`` whitened directions with a single class).
    """
    d = Xs.shape[1]
    counts = np.bincount(yi, minlength=K).astype(np.float64)
    sums = np.zeros((K, d))
    np.add.at(sums, yi, Xs)
    centroids = sums / np.maximum(counts, 1.0)[:, None]
    R = Xs - centroids[yi]
    cov = R.T @ R / max(len(Xs) - K, 1)
    level = max(float(np.trace(cov)) / d, 1e-6)
    cov = (1.0 - shrinkage) * cov + shrinkage * level * np.eye(d)
    w, V = np.linalg.eigh(cov)
    W = (V / np.sqrt(np.maximum(w, 1e-9 * level))) @ V.T  # (d, d)
    C = centroids @ W
    if K >= 2:
        _, sv, Vt = np.linalg.svd(C - C.mean(0), full_matrices=False)
        r = max(1, min(K - 1, int((sv > 1e-9 * max(sv.max(), 1e-300)).sum())))
        W = W @ Vt[:r].T  # (d, r)
    return centroids @ W, W


def _novelty(Xs: np.ndarray, centroids: np.ndarray, P: np.ndarray) -> np.ndarray:
    Z = Xs @ P
    d2 = (Z ** 2).sum(1)[:, None] - 2 * Z @ centroids.T + (centroids ** 2).sum(1)[None, :]
    return np.sqrt(np.maximum(d2.min(1), 0.0) / P.shape[1])  # RMS per direction: comparable across widths


class OpenSetDetector(OutlierMixin, BaseEstimator):
    """Known vs unknown scheme by distance to the nearest known class.

    Parameters
    ----------
    target_false_reject : fraction of known-scheme samples allowed to be called unknown
    shrinkage : weight of the identity in the covariance, in ``[0, 1]``
    cv : folds for the out-of-fold scores the threshold is set on
    random_state : seed of the fold split

    Attributes
    ----------
    classes_ : ``(K,)`` labels the centroids belong to (one class when fitted without labels)
    mean_, scale_ : ``(d,)`` standardisation
    centroids_ : ``(K, r)`` class centroids in the discriminant space
    projection_ : ``(d, r)`` standardised features → discriminant space
    threshold_ : novelty above which a sample is unknown; ``offset_ = -threshold_``
    """

    _state_arrays = ("mean_", "scale_", "centroids_", "projection_")
    _state_array_dicts = ()
    _state_json = ("classes_", "threshold_", "offset_", "n_features_in_", "feature_names_in_")
    _state_children = ()

    def __init__(self, target_false_reject=0.01, shrinkage=0.5, cv=5, random_state=0):
        self.target_false_reject = target_false_reject
        self.shrinkage = shrinkage
        self.cv = cv
        self.random_state = random_state

    def fit(self, X, y=None, groups=None):
        """Fit centroids on ``(n, d)`` features of known schemes ``y`` (one class without ``y``);
        with ``groups`` (e.g. probe ids) the threshold's folds hold out whole groups."""
        X = validate_data(self, X, dtype=np.float64)
        if not 0.0 <= self.target_false_reject < 1.0:
            raise ValueError(f"target_false_reject must be in [0, 1), got {self.target_false_reject!r}")
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {self.shrinkage!r}")
        if y is None:
            y = np.zeros(len(X), dtype=np.int64)
        else:
            y = np.asarray(y)
            if y.ndim != 1 or len(y) != len(X):
                raise ValueError(f"y must be 1D with {len(X)} labels")
            check_classification_targets(y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        K = len(self.classes_)
        self.mean_, self.scale_ = linear.fit_scaler(X)
        Xs = (X - self.mean_) / self.scale_
        self.centroids_, self.projection_ = _fit_space(Xs, yi, K, self.shrinkage)
        scores = self._out_of_fold(Xs, yi, K, groups)
        self.threshold_ = float(np.quantile(scores, 1.0 - self.target_false_reject, method="higher"))
        self.offset_ = -self.threshold_
        return self

    def _out_of_fold(self, Xs, yi, K, groups) -> np.ndarray:
        split = None
        if groups is not None and len(np.unique(groups)) >= 2:
            split = linear.folds(yi, self.cv, self.random_state, groups)
        elif min(self.cv, len(Xs)) >= 2:
            k = min(self.cv, len(Xs))
            if np.bincount(yi, minlength=K).min() >= k:
                split = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.random_state).split(Xs, yi)
            else:
                split = KFold(n_splits=k, shuffle=True, random_state=self.random_state).split(Xs)
        if split is None:
            return _novelty(Xs, self.centroids_, self.projection_)
        out = np.zeros(len(Xs))
        for tr, te in split:
            present = np.unique(yi[tr])
            remap = np.searchsorted(present, yi[tr])
            cen, P = _fit_space(Xs[tr], remap, len(present), self.shrinkage)
            out[te] = _novelty(Xs[te], cen, P)
        return out

    def novelty(self, X) -> np.ndarray:
        """``(n,)`` distance to the nearest known class (higher: less like any known scheme)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return _novelty((X - self.mean_) / self.scale_, self.centroids_, self.projection_)

    def score_samples(self, X):
        """``-novelty``: higher for samples that look like a known scheme."""
        return -self.novelty(X)

    def decision_function(self, X):
        """Positive for known, negative for unknown (``score_samples − offset_``)."""
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """``1`` where the sample fits a known scheme, ``-1`` where it does not."""
        return np.where(self.decision_function(X) >= 0, 1, -1)
