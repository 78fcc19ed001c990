"""The fast forms of the feature numerics against independent implementations (scipy, LAPACK)."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax

from kvfp.fingerprint.features.common import js
from kvfp.fingerprint.features.explain import _resid


@pytest.mark.parametrize("scale", [0.1, 3.0, 40.0])  # near-uniform to nearly one-hot, underflowing tails
def test_js_equals_scipy(scale):
    rng = np.random.default_rng(1)
    la = log_softmax(rng.normal(size=(5, 300)) * scale, axis=-1)
    lb = log_softmax(rng.normal(size=(5, 300)) * scale, axis=-1)
    want = jensenshannon(np.exp(la), np.exp(lb), axis=-1) ** 2  # scipy returns the distance, base e
    np.testing.assert_allclose(js(la, lb), want, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(js(la, lb, np.exp(la), np.exp(lb)), js(la, lb), rtol=0, atol=0)
    assert np.all(js(la, la) < 1e-15)  # identical distributions: zero up to rounding


def test_js_stays_finite_where_both_probabilities_underflow():
    la = np.array([0.0, -1e5, -1e5])  # logprob floor of kvfp's readers
    lb = np.array([-1e-9, -1e5, -21.0])
    assert np.isfinite(js(la, lb)).all()


@pytest.mark.parametrize("k", [1, 2])
def test_residual_equals_lstsq(k):
    rng = np.random.default_rng(2)
    D = rng.normal(size=4000)
    basis = [rng.normal(size=4000) for _ in range(k)]
    A = np.stack(basis, axis=1)
    coef, *_ = np.linalg.lstsq(A, D, rcond=None)
    r = D - A @ coef
    assert _resid(D, basis) == pytest.approx(float(r @ r), rel=1e-10)


def test_residual_with_collinear_columns_and_exact_fit():
    rng = np.random.default_rng(3)
    C = rng.normal(size=500)
    D = 2.5 * C
    assert _resid(D, [C, 3 * C]) == pytest.approx(0.0, abs=1e-18 * float(D @ D) + 1e-20)
    assert _resid(D, [np.zeros(500)]) == float(D @ D)  # a zero column explains nothing
    N = rng.normal(size=500)
    assert _resid(D + N, [N, C]) == pytest.approx(0.0, abs=1e-16 * float((D + N) @ (D + N)))
