"""``SchemeClassifier``: which known scheme, with calibrated probabilities.

Standardised features, a multinomial logistic regression, and one temperature fitted on
out-of-fold logits (temperature scaling, Guo et al. 2017, "On Calibration of Modern Neural
Networks"): the probabilities of a model that never saw a sample are what calibration should
match, not the optimistic in-sample ones.

Given ``feature_names``, the candidate features that simulate a class (``cand.<tier>.<kind>[c]``)
also enter that class's logit through weights shared by all classes: a conditional logit
(:mod:`~kvfp.fingerprint.estimators.conditional`). Without names it is the plain model.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from kvfp.fingerprint.estimators import conditional, linear


class SchemeClassifier(ClassifierMixin, BaseEstimator):
    """Calibrated multinomial logistic regression over feature vectors.

    Parameters
    ----------
    C : inverse L2 regularisation strength of the logistic regression
    cv : folds for the out-of-fold logits the temperature is fitted on (fewer when a class is rarer)
    calibrate : fit the temperature (``False``: temperature 1)
    max_iter : optimiser iterations
    random_state : seed of the fold split
    feature_names : names of the ``d`` columns (``None``: no candidate structure is used)

    Attributes
    ----------
    classes_ : ``(K,)`` labels
    mean_, scale_ : ``(d,)`` standardisation
    coef_ : ``(K, d)``, intercept_ : ``(K,)`` logits on standardised features
    cand_index_ : ``(K, m)`` column of each class's candidate feature of each kind (-1: none)
    theta_ : ``(m,)`` the shared weights of those kinds (``m`` = 0 without candidate features)
    temperature_ : float, logits are divided by it
    n_iter_ : iterations the logistic regression took
    """

    _state_arrays = ("mean_", "scale_", "coef_", "intercept_", "cand_index_", "theta_")
    _state_array_dicts = ()
    _state_json = ("classes_", "temperature_", "n_iter_", "n_features_in_", "feature_names_in_")
    _state_children = ()

    def __init__(self, C=1.0, cv=5, calibrate=True, max_iter=2000, random_state=0, feature_names=None):
        self.C = C
        self.cv = cv
        self.calibrate = calibrate
        self.max_iter = max_iter
        self.random_state = random_state
        self.feature_names = feature_names

    def fit(self, X, y, groups=None):
        """Fit on ``(n, d)`` features and ``n`` labels; ``groups`` (e.g. probe ids) makes the
        calibration folds hold out whole groups."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"SchemeClassifier needs samples of at least 2 classes; got 1 class "
                             f"({self.classes_[0]!r})")
        if not self.C > 0:
            raise ValueError(f"C must be positive, got {self.C!r}")
        K = len(self.classes_)
        if self.feature_names is not None and len(self.feature_names) != X.shape[1]:
            raise ValueError(f"feature_names has {len(self.feature_names)} names for {X.shape[1]} features")
        names = self.feature_names if self.feature_names is not None else []
        self.cand_index_ = conditional.candidate_index(names, self.classes_)
        self.mean_, self.scale_ = linear.fit_scaler(X)
        Xs = (X - self.mean_) / self.scale_
        self.coef_, self.intercept_, self.theta_, self.n_iter_ = self._fit_arrays(Xs, yi, K)
        self.temperature_ = 1.0
        self._oof_proba = None  # held-out probabilities, for the composite's decisions; not saved
        if self.calibrate:
            oof = linear.out_of_fold_logits(Xs, yi, K, self.cv, self.random_state, groups,
                                            fit=lambda Xa, ya: self._fit_arrays(Xa, ya, K)[:3],
                                            predict=lambda Xb, w: conditional.logits(Xb, *w, self.cand_index_))
            if oof is not None:
                self.temperature_ = linear.fit_temperature(oof, yi)
                self._oof_proba = linear.softmax(oof / self.temperature_)
        return self

    def _fit_arrays(self, Xs, yi, K):
        """``(coef, intercept, theta, iterations)`` on standardised ``Xs``."""
        if self.cand_index_.shape[1] == 0:
            coef, icpt, it = linear.fit_logistic(Xs, yi, K, self.C, self.max_iter, self.random_state)
            return coef, icpt, np.zeros(0), it
        return conditional.fit(Xs, yi, K, self.C, self.max_iter, self.cand_index_)

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        Xs = (X - self.mean_) / self.scale_
        return conditional.logits(Xs, self.coef_, self.intercept_, self.theta_, self.cand_index_) / self.temperature_

    def decision_function(self, X):
        """Calibrated logits ``(n, K)``; ``(n,)`` (second class minus first) for two classes."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if len(self.classes_) == 2 else z

    def predict_log_proba(self, X):
        return linear.log_softmax(self._logits(X))

    def predict_proba(self, X):
        """Calibrated class probabilities ``(n, K)`` in the order of :attr:`classes_`."""
        return linear.softmax(self._logits(X))

    def predict(self, X):
        z = self._logits(X)
        return self.classes_[np.argmax(z, axis=1)]
